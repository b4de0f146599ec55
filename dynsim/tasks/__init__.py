"""Tasks: where the training data come from.

- :class:`TeacherStudent`: Gaussian inputs (optionally with a power-law covariance) labelled by a fixed random
  teacher, a finite training set or a fresh batch every step.
- :class:`SparseFeatures`: sparse features with power-law frequencies, reconstructed by an autoencoder (the
  superposition toy model's task).
- :class:`Classification`: Gaussian inputs in classes set by a linear teacher, trained on softmax cross-entropy with
  an optional z-loss (the task chooses its loss, :attr:`Task.loss`).

A new task subclasses :class:`Task`.
"""

from ._base import Task as Task
from ._classification import ClassData as ClassData
from ._classification import Classification as Classification
from ._classification import SoftmaxCrossEntropy as SoftmaxCrossEntropy
from ._sparse_features import FeatureData as FeatureData
from ._sparse_features import SparseFeatures as SparseFeatures
from ._sparse_features import feature_probabilities as feature_probabilities
from ._teacher_student import Data as Data
from ._teacher_student import TeacherStudent as TeacherStudent

__all__ = ["Task", "TeacherStudent", "Data", "SparseFeatures", "FeatureData", "feature_probabilities",
           "Classification", "ClassData", "SoftmaxCrossEntropy"]

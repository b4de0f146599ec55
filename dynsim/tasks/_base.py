"""The task contract: what the executor needs of a task."""

from __future__ import annotations

__all__ = ["Task"]


class Task:
    """Where the training data come from. :class:`~dynsim.tasks.TeacherStudent` and
    :class:`~dynsim.tasks.SparseFeatures` are examples; a new task subclasses this as a frozen dataclass (it keys
    compiled programs) and implements the methods below.

    Attributes a task provides: ``d_in``, ``d_out`` (dimensions), ``n_train`` (0 for an online task), ``n_test``,
    ``online`` (whether every step draws a fresh batch; the training loss is then measured on the test set), and
    ``loss`` (the loss it chooses; ``None``, the default: the model's).
    """

    d_in: int
    d_out: int
    n_train: int
    n_test: int
    loss = None
    """The training loss the task chooses, ``(outputs, targets) -> scalar`` (hashable by value), or ``None`` for the
    model's own (the squared error of :class:`~dynsim.models.MLP`). :func:`dynsim.run` trains the model on it
    (:class:`dynsim.models.WithLoss`); ``None`` leaves the model, and its programs, exactly as they are."""

    @property
    def online(self) -> bool:
        """Whether every step draws a fresh batch (then the training loss is measured on the test set)."""
        return self.n_train == 0

    def program_task(self) -> Task:
        """The task the compiled programs are keyed by (default: this one). A task whose settings only shape the
        arrays of :meth:`make` returns itself with those settings fixed, so runs differing only in them share
        programs."""
        return self

    def make(self):
        """The task's arrays (training and test sets and whatever ``batch`` reads), made once per run."""
        raise NotImplementedError

    def batch(self, data, step, batch_size: int):
        """Inputs ``[d_in, B]`` and targets ``[d_out, B]`` of step ``step`` (traced)."""
        raise NotImplementedError

    def validate_batch_size(self, batch_size: int) -> None:
        """Raise ``ValueError`` (one sentence) for a batch size the task cannot serve."""

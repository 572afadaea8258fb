"""Errors a job can end with. Kept apart from contract.py so the engine and nodes can raise them
without importing the request/response code."""

from __future__ import annotations


class UserError(Exception):
    """Something in the request is wrong. The message is shown to the client as is, so it must name
    the field or node id and say what was expected."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or [message]
        super().__init__(message)

    @classmethod
    def many(cls, headline: str, problems: list[str]) -> UserError:
        if len(problems) == 1:
            return cls(f"{headline}: {problems[0]}", problems)
        listed = "\n".join(f"- {p}" for p in problems)
        return cls(f"{headline} ({len(problems)} problems):\n{listed}", problems)


class JobStopped(Exception):
    """The job was stopped from outside (cancel or deadline) between two units of work."""

    reason = "stopped"


class JobCancelled(JobStopped):
    reason = "cancelled"


class JobTimedOut(JobStopped):
    reason = "timed out"


class NodeError(Exception):
    """A node failed while running; carries the node id and type for the message the client sees."""

    def __init__(self, node_id: str, class_type: str, cause: BaseException, inputs: str = ""):
        self.node_id = node_id
        self.class_type = class_type
        self.cause = cause
        self.inputs = inputs  # a short description of the node's tensor inputs (sizes), for OOM messages
        super().__init__(f"node {node_id} ({class_type}) failed: {type(cause).__name__}: {cause}")

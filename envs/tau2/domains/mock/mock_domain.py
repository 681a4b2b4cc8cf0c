"""tau2's mock domain: a task manager for tests (users own tasks; a notification inbox).

Semantics follow upstream ``src/tau2/domains/mock/`` (read, not copied): agent
tools ``create_task`` (ids ``task_<n+1>``, n the number of tasks), ``get_users``,
``update_task_status`` and ``transfer_to_human_agents``; user tools
``check_notifications`` and ``dismiss_notification``; the non-tool functions
``assert_number_of_tasks``, ``assert_task_status`` (agent side),
``add_notification`` and ``assert_notification_status`` (user side) that task
data calls in ``initialization_actions`` and ``env_assertions``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from areal_env.envs.tau2.domain import Domain
from areal_env.envs.tau2.toolkit import DB, Toolkit, ToolType, is_tool

TaskStatus = Literal["pending", "completed"]


class MockTask(BaseModel):
    """A task of the task manager."""

    task_id: str = Field(description="Unique identifier for the task")
    title: str = Field(description="Title of the task")
    description: str | None = Field(None, description="Description of the task")
    status: TaskStatus = Field(description="Status of the task")


class MockUser(BaseModel):
    """A user and the ids of the tasks they own."""

    user_id: str = Field(description="Unique identifier for the user")
    name: str = Field(description="User's name")
    tasks: list[str] = Field(description="List of task IDs assigned to the user")


class MockDB(DB):
    """The agent-side DB: tasks and users by id."""

    tasks: dict[str, MockTask]
    users: dict[str, MockUser]


class Notification(BaseModel):
    """A notification in the user's inbox."""

    model_config = {"extra": "forbid"}

    notification_id: str
    message: str
    status: Literal["unread", "read"] = "unread"
    task_id: str | None = None


class MockUserDB(DB):
    """The user-side DB: the notification inbox."""

    notifications: dict[str, Notification] = Field(default_factory=dict)


class MockTools(Toolkit[MockDB]):
    """The mock domain's agent tools."""

    @is_tool(ToolType.WRITE)
    def create_task(self, user_id: str, title: str, description: str | None = None) -> MockTask:
        """Create a new task for a user.

        Args:
            user_id: The ID of the user creating the task
            title: The title of the task
            description: Optional description of the task
        """
        if user_id not in self.db.users:
            raise ValueError(f"User {user_id} not found")
        task = MockTask(
            task_id=f"task_{len(self.db.tasks) + 1}",
            title=title,
            description=description,
            status="pending",
        )
        self.db.tasks[task.task_id] = task
        self.db.users[user_id].tasks.append(task.task_id)
        return task

    @is_tool(ToolType.READ)
    def get_users(self) -> list[MockUser]:
        """Get all users in the database."""
        return list(self.db.users.values())

    @is_tool(ToolType.WRITE)
    def update_task_status(self, task_id: str, status: TaskStatus) -> MockTask:
        """Update the status of a task.

        Args:
            task_id: The ID of the task to update
            status: The new status of the task
        """
        if task_id not in self.db.tasks:
            raise ValueError(f"Task {task_id} not found")
        task = self.db.tasks[task_id]
        task.status = status
        return task

    @is_tool(ToolType.GENERIC)
    def transfer_to_human_agents(self, summary: str) -> str:
        """Transfer the user to a human agent, with a summary of the user's issue.

        Only transfer if the user explicitly asks for a human agent, or if, given
        the policy and the available tools, you cannot solve the user's issue.

        Args:
            summary: A summary of the user's issue.
        """
        return "Transfer successful"

    def assert_number_of_tasks(self, user_id: str, expected_number: int) -> bool:
        """Whether ``user_id`` owns ``expected_number`` tasks (env assertion)."""
        if user_id not in self.db.users:
            raise ValueError(f"User {user_id} not found")
        return len(self.db.users[user_id].tasks) == expected_number

    def assert_task_status(self, task_id: str, expected_status: TaskStatus) -> bool:
        """Whether task ``task_id`` has ``expected_status`` (env assertion)."""
        if task_id not in self.db.tasks:
            raise ValueError(f"Task {task_id} not found")
        return self.db.tasks[task_id].status == expected_status


class MockUserTools(Toolkit[MockUserDB]):
    """The mock domain's user-side tools: a notification inbox."""

    @is_tool(ToolType.READ)
    def check_notifications(self) -> list[Notification]:
        """Check all notifications in the user's inbox."""
        return list(self.db.notifications.values())

    @is_tool(ToolType.WRITE)
    def dismiss_notification(self, notification_id: str) -> str:
        """Dismiss (mark as read) a notification.

        Args:
            notification_id: The ID of the notification to dismiss.
        """
        if notification_id not in self.db.notifications:
            raise ValueError(f"Notification {notification_id} not found")
        self.db.notifications[notification_id].status = "read"
        return f"Notification {notification_id} dismissed"

    def add_notification(
        self, notification_id: str, message: str, task_id: str | None = None
    ) -> Notification:
        """Put a notification in the inbox (initialization action)."""
        note = Notification(notification_id=notification_id, message=message, task_id=task_id)
        self.db.notifications[notification_id] = note
        return note

    def assert_notification_status(self, notification_id: str, expected_status: str) -> bool:
        """Whether the notification has ``expected_status`` (env assertion)."""
        if notification_id not in self.db.notifications:
            raise ValueError(f"Notification {notification_id} not found")
        return self.db.notifications[notification_id].status == expected_status


DOMAIN = Domain(
    name="mock",
    db_type=MockDB,
    db_file="db.json",
    tools=MockTools,
    user_db_type=MockUserDB,
    user_db_file="user_db.json",
    user_tools=MockUserTools,
)
"""The mock domain, as ``DOMAINS`` in ``envs/tau2/domain.py`` names it."""

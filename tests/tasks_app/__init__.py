"""A Django app's task module for the tests (`tasks.py`): listed in JOB_TASK_MODULES by the
`tasks_app` fixture in this process, and through the environment in the roles a test starts."""

TASK_MODULE = "tests.tasks_app.tasks"

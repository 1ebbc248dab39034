"""A module no setting lists: the tests check that naming `tests.tasks_app.unlisted.run` as
a job's type never imports it."""


def run(*args: object) -> None:
    raise AssertionError("imported and called by a job type")

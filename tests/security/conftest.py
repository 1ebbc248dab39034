# A ClickHouse table of the test's own, for the injection tests on log search.
from tests.logs.conftest import ch_table  # noqa: F401

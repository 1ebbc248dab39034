# A ClickHouse table of the test's own, for the injection tests on log search; the dispatch
# and log pipelines' fixtures for the pipeline fuzz target; what the first tenant owns, for
# the tenant walks.
from tests.logs.conftest import ch_table, log_topics  # noqa: F401
from tests.orchestration.conftest import queue, topics  # noqa: F401
from tests.security.test_tenants import owned  # noqa: F401

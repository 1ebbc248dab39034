"""Tooling, never imported by the production packages: the embedded engines (`make run`,
`make test`), the dev stack, the chaos harness and the benchmarks. A Django app only for its
management commands (`manage.py bench`, `manage.py chaos`), installed outside production."""

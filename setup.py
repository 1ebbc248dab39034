"""The installable distribution, `orchestration-platform`, for a Django project of your own
(README, "Use it from your project"; docs/design.md, "A host project").

This repository keeps the layout its users asked for: `config/`, `jobs/`, `logs/` and the
rest at the top, imported as `jobs.models`. Installed into another project, names that plain
would collide with the project's own `config` or `jobs` package. So the wheel carries the
same packages under one root, `orchestration_platform` (`orchestration_platform.jobs.models`),
and the build rewrites what names them, as pip's `vendoring` does for the libraries pip ships:

- absolute imports of our packages (`from jobs.models import Job`);
- string literals that are dotted paths into them and are loaded by name
  (`"jobs.task_backend.JobsBackend"`, `"config.urls"`, `"jobs.apps.JobsConfig"`); a string is
  rewritten only when its module exists in the tree, so a Kafka topic (`"jobs.dead"`), a
  Celery task name (`"orchestration.run_job"`) or a logger name stays as it is;
- `AppConfig.name` in each `apps.py`.

Nothing else changes: app labels are already unique (`orchestration_jobs`, ...), table names
are pinned. `tests/test_distribution.py` builds the wheel and checks what it holds.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "orchestration_platform"
# What the wheel carries (devtools and tests stay in the checkout).
OURS = ("config", "jobs", "workflows", "logs", "metrics", "orchestration", "dashboard")
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _module_exists(dotted: str, root: Path = ROOT) -> bool:
    """Whether `dotted`, or all of it but its last part (an attribute), is a module or
    package of ours (at least two parts: `jobs` alone is a name, `jobs.urls` a module)."""
    parts = dotted.split(".")
    for n in (len(parts), len(parts) - 1):
        if n < 2:
            continue
        path = root.joinpath(*parts[:n])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return True
    return False


def rewrite(source: str, *, apps_module: bool = False, root: Path = ROOT) -> str:
    """`source` with our packages named under PACKAGE (see the module's docstring)."""
    tree = ast.parse(source)
    data = source.encode()  # ast's column offsets count UTF-8 bytes
    offsets = [0]
    for line in data.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))

    def span(node: ast.expr | ast.stmt) -> tuple[int, int]:
        end_line, end_col = node.end_lineno or node.lineno, node.end_col_offset or node.col_offset
        return offsets[node.lineno - 1] + node.col_offset, offsets[end_line - 1] + end_col

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in bytes
    logger_args = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger"
        for arg in node.args
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in OURS:
                head = data.index(node.module.encode(), span(node)[0])
                edits.append((head, head + len(node.module.encode()), f"{PACKAGE}.{node.module}"))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in OURS for a in node.names):
            # `import jobs.models` binds `jobs`: bind it to ours, and import the submodule.
            statements = []
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top not in OURS:
                    statements.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
                elif alias.asname:
                    statements.append(f"import {PACKAGE}.{alias.name} as {alias.asname}")
                else:
                    statements.append(f"import {PACKAGE}.{alias.name}; from {PACKAGE} import {top}")
            edits.append((*span(node), "; ".join(statements)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in logger_args:
            value = node.value
            named = DOTTED.fullmatch(value) and value.split(".")[0] in OURS and _module_exists(value, root)
            if named or (apps_module and value in OURS):
                start, end = span(node)
                if data[start : start + 1] in (b"'", b'"') and data[start + 1 : end - 1] == value.encode():
                    edits.append((start + 1, end - 1, f"{PACKAGE}.{value}"))
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text.encode() + data[end:]
    return data.decode()


if __name__ == "__main__":
    from setuptools import setup
    from setuptools.command.build_py import build_py

    class NamespacedBuild(build_py):
        """Copy the packages as setuptools does, then rewrite the copies (never the checkout)."""

        def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
            if package == PACKAGE:
                return []  # the checkout's root (manage.py, setup.py): not part of the package
            return super().find_package_modules(package, package_dir)

        def run(self) -> None:
            super().run()
            base = Path(self.build_lib) / PACKAGE
            (base / "__init__.py").write_text('"""The platform\'s packages, for a project of your own."""\n')
            for path in base.rglob("*.py"):
                if path.parent == base:
                    continue
                path.write_text(rewrite(path.read_text(), apps_module=path.name == "apps.py"))

    packages = [PACKAGE] + [
        f"{PACKAGE}.{'.'.join(init.parent.relative_to(ROOT).parts)}"
        for top in OURS
        for init in sorted((ROOT / top).rglob("__init__.py"))
    ]
    setup(
        packages=packages,
        package_dir={PACKAGE: "."},
        package_data={
            PACKAGE: ["templates/**/*.html"],
            **{p: ["**/*.html", "**/*.css", "**/*.js", "**/*.svg", "**/*.json", "**/*.yml"] for p in packages[1:]},
        },
        cmdclass={"build_py": NamespacedBuild},
    )

"""The shape the code must keep: only `storage/` speaks Redis, and `api/` has no import cycle (its
blueprints reach the services through `api.context`, never through the app factory)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_STORAGE = ("api", "worker", "layerq")
REDIS_ALLOWED: set[str] = set()


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(tree: ast.AST) -> list[tuple[str, int]]:
    """Every module name an import statement names, anywhere in the file (function-level too)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return out


def test_only_storage_speaks_redis():
    offenders = []
    for package in OUTSIDE_STORAGE:
        for path in modules(package):
            rel = path.relative_to(ROOT).as_posix()
            if rel in REDIS_ALLOWED:
                continue
            tree = ast.parse(path.read_text(), rel)
            for name, line in imported(tree):
                if name == "redis" or name.startswith("redis.") or name == "storage.client.connect":
                    offenders.append(f"{rel}:{line} imports {name}")
            for node in ast.walk(tree):
                # A store's client reached from outside (`jobs.r`, `svc.jobs._r`) or a raw client passed on.
                if isinstance(node, ast.Attribute) and node.attr in ("r", "_r"):
                    offenders.append(f"{rel}:{node.lineno} uses .{node.attr}")
                if isinstance(node, ast.keyword) and node.arg == "redis_client":
                    offenders.append(f"{rel}:{node.lineno} passes redis_client=")
    assert offenders == []


def test_stores_keep_their_client_private():
    for path in modules("storage"):
        assert "self.r =" not in path.read_text(), path


def test_every_key_is_named_in_storage_keys():
    # Key names are built in one module: no other module formats a `<prefix>:job:`-style key.
    markers = (":job:", ":queued:", ":unsent:", ":workers:", ":holding:", ":batch:", ":webhook:", ":idem:",
               ":cache:", ":upload:", ":stats:")
    offenders = []
    for package in (*OUTSIDE_STORAGE, "storage"):
        for path in modules(package):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ("storage/keys.py", *REDIS_ALLOWED):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.JoinedStr):
                    text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                    offenders += [f"{rel}:{node.lineno} {m}" for m in markers if m in text]
    assert offenders == []


def api_import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in modules("api"):
        name = "api." + path.stem if path.stem != "__init__" else "api"
        deps = set()
        for mod, _ in imported(ast.parse(path.read_text())):
            if mod.startswith("api.") or mod == "api":
                parts = mod.split(".")
                deps.add(".".join(parts[:2]) if (ROOT / "api" / f"{parts[1] if len(parts) > 1 else ''}.py").exists()
                         else "api")
        graph[name] = deps - {name}
    return graph


def test_api_has_no_import_cycle():
    graph = api_import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path + [node, dep])
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_blueprints_do_not_import_the_app_factory():
    importers = sorted(m for m, deps in api_import_graph().items() if "api.app" in deps)
    assert importers == []

"""
The layers of DESIGN.md hold in the imports: the realm, the config, the
checkers and the stores sit below the protocol packages and import none of
them; no netsuite module imports itself back through others; and imports are at
module top, not tucked into functions to dodge a cycle.  Read with C{ast} from
the source, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from twisted.mail import pop3, smtp
from twisted.protocols import ftp
from zope.interface.verify import verifyClass

from netsuite import protocols, realm
from netsuite.imap.account import IImapAccount
from netsuite.queue.runner import QueueRunner

ROOT = Path(__file__).resolve().parent.parent

#: The protocol packages (and the outgoing queue, the SMTP client side).
PROTOCOLS = ("smtp", "pop3", "imap", "ftp", "telnet", "queue")
#: Modules below the protocols: they may not import any of them.
BELOW_PROTOCOLS = ("netsuite.realm", "netsuite.config", "netsuite.protocols",
                   "netsuite.durable", "netsuite.framer", "netsuite.deadline",
                   "netsuite.tls", "netsuite.auth", "netsuite.store")

#: (importing file, imported module) -> why that import runs inside a function.
LATE_IMPORTS = {
    ("netsuite/auth/factories.py", "netsuite.auth.passwdfile"):
        "strcred plugins are imported by every twistd plugin scan; argon2/bcrypt load "
        "only when the checker is chosen",
    ("netsuite/auth/factories.py", "netsuite.auth.pam"):
        "python-pam is an optional dependency, imported only when 'pam' is chosen",
    ("netsuite/auth/factories.py", "netsuite.auth.sqlchecker"):
        "psycopg and its pool load only when the 'sql' checker is chosen",
    ("netsuite/auth/factories.py", "netsuite.db.pool"):
        "psycopg and its pool load only when the 'sql' checker is chosen",
    ("netsuite/service.py", "netsuite.tls_acme"):
        "the ACME client (acme, josepy, requests) loads only when [tls] acme is set",
}
#: Import cycles (sorted module names) -> why they are tolerated.
CYCLES: dict[tuple[str, ...], str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    path: str  # its file, relative to the root
    target: str  # the netsuite module imported
    line: int
    late: bool  # inside a function
    typing_only: bool  # under `if TYPE_CHECKING:`, never run


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "netsuite").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: dict) -> list[str]:
    """The names an import statement imports, absolute."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
    # `from netsuite import protocols` imports the module netsuite.protocols.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _resolve(name: str, modules: dict) -> str | None:
    """The netsuite module that importing C{name} runs (a package for a name in it)."""
    if not name.startswith("netsuite"):
        return None
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports() -> list[Import]:
    """Every import of a netsuite module by a netsuite module."""
    modules = _modules()
    result = set()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        rel = path.relative_to(ROOT).as_posix()
        # (node, inside a function, under TYPE_CHECKING)
        pending: list[tuple[ast.AST, bool, bool]] = [(ast.parse(path.read_text(), rel),
                                                      False, False)]
        while pending:
            node, late, typing_only = pending.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, package, modules):
                        module = _resolve(target, modules)
                        if module and module != name:
                            result.add(Import(name, rel, module, child.lineno, late,
                                              typing_only))
                in_function = late or isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                guarded = typing_only or (isinstance(child, ast.If)
                                          and "TYPE_CHECKING" in ast.unparse(child.test))
                pending.append((child, in_function, guarded))
    return sorted(result, key=lambda e: (e.path, e.line, e.target))


def cycles(edges: list[Import]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles():
    """Among the imports that run (at module top or inside functions)."""
    running = [e for e in imports() if not e.typing_only]
    unexplained = [c for c in cycles(running) if c not in CYCLES]
    assert not unexplained, "\n".join(" <-> ".join(c) for c in unexplained)


def test_imports_at_module_top():
    late = [f"{e.path}:{e.line}: {e.target}" for e in imports()
            if e.late and (e.path, e.target) not in LATE_IMPORTS]
    assert not late, "imports inside functions:\n" + "\n".join(late)


def test_allow_lists_are_current():
    """An allowance that no longer applies is removed, not left to cover a new one."""
    late = {(e.path, e.target) for e in imports() if e.late}
    assert set(LATE_IMPORTS) <= late, set(LATE_IMPORTS) - late
    running = cycles([e for e in imports() if not e.typing_only])
    assert set(CYCLES) <= set(running), set(CYCLES) - set(running)


def test_realm_config_auth_store_import_no_protocol():
    """Also for typing: a store never knows which protocol called it."""
    wrong = [f"{e.path}:{e.line}: {e.target}" for e in imports()
             if e.source.startswith(BELOW_PROTOCOLS)
             and e.target.split(".")[1] in PROTOCOLS]
    assert not wrong, "\n".join(wrong)


def test_every_protocol_registers_its_avatar_maker():
    """The realm learns its avatars from the protocol packages, as config learns sections."""
    protocols.load_all()
    for iface in (smtp.IMessageDelivery, pop3.IMailbox, IImapAccount, ftp.IFTPShell,
                  realm.ITerminalAvatar):
        assert iface in realm.AVATAR_MAKERS, iface


def test_queue_runner_is_the_realms_relay():
    assert verifyClass(realm.IRelay, QueueRunner)

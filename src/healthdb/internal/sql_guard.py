"""The SQL guard: what raw SQL may look like before ``DatabaseService.execute_raw`` runs it.

Raw SQL is the escape hatch from the ORM wall, so it is held to the shape of SQL written by a
developer with parameters, not assembled from strings. :func:`check` parses the text with
sqlglot (in the backend's dialect) and refuses, with :class:`UnsafeStatement`:

* text that does not parse (fail closed), or is empty;
* more than one statement (a single trailing ``;`` is tolerated);
* comments (``--`` and ``/* */``), the usual tail of an injected payload;
* string literals anywhere, and number literals in ``WHERE``/``HAVING``/``JOIN ... ON``/
  ``VALUES``/``SET`` and other predicate positions: data belongs in ``:name`` parameters.
  Number literals stay allowed in ``LIMIT``/``OFFSET``/``FETCH``, in the select list
  (``SELECT 1``, ``count(1)``) and in ``ORDER BY``/``GROUP BY`` positions, where they are part
  of the query's shape rather than data; ``TRUE``/``FALSE``/``NULL`` are allowed everywhere;
* placeholders other than ``:name`` (``?``, ``$1``, ``%s``);
* DDL and session/administration statements (CREATE, DROP, ALTER, TRUNCATE, GRANT, REVOKE,
  COPY, SET, PRAGMA, ATTACH, ``SELECT ... INTO``, transaction control, anything sqlglot can
  only model as an opaque command);
* any statement but SELECT (including WITH and set operations) when ``read_only``; INSERT,
  UPDATE and DELETE otherwise. A data-modifying CTE inside a SELECT counts as a write;
* functions that step outside the statement: ``set_config`` (it could move the transaction
  to another clinic), ``pg_*`` administration and file functions, ``dblink``, large objects,
  ``query_to_xml`` and friends (dynamic SQL), SQLite's ``load_extension``/``readfile``/
  ``writefile``.

This is a shape check, not the tenancy wall: on PostgreSQL the statement still runs under
row-level security with the transaction's clinic. Messages name the rule, never the SQL.
This module depends on nothing else in healthdb but the error type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlglot
from sqlglot import TokenType, exp

from healthdb.errors import UnsafeStatement

MAX_SQL_LENGTH = 20_000

_DIALECTS = {"postgresql": "postgres", "postgres": "postgres", "sqlite": "sqlite"}


def _classes(*names: str) -> tuple[type[exp.Expression], ...]:
    # Looked up by name so a sqlglot release that renames or drops one never breaks import.
    return tuple(c for c in (getattr(exp, n, None) for n in names) if isinstance(c, type))


_DDL = _classes(
    "Create",
    "Drop",
    "Alter",
    "AlterTable",
    "AlterColumn",
    "AlterRename",
    "TruncateTable",
    "Grant",
    "Revoke",
    "Comment",
)
_ADMIN = _classes(
    "Command",
    "Copy",
    "Set",
    "Pragma",
    "Attach",
    "Detach",
    "Transaction",
    "Commit",
    "Rollback",
    "Use",
    "Describe",
    "Analyze",
    "LoadData",
    "Refresh",
    "Cache",
    "Uncache",
    "Merge",
    "Kill",
    "Execute",
    "Prepare",
)
_WRITES = _classes("Insert", "Update", "Delete", "Merge")
_READ_TOPS = _classes("Select", "Union", "Intersect", "Except", "SetOperation")
_WRITE_TOPS = _classes("Insert", "Update", "Delete")
_NUMBER_OK = _classes("Limit", "Offset", "Fetch")
_PREDICATES = _classes("Where", "Having", "Join", "Values", "Qualify", "Update", "Insert")
_STRING_NODES = _classes(
    "RawString", "National", "HexString", "BitString", "ByteString", "UnicodeString"
)
_COMMENT_TOKENS = ("--", "/*", "*/")
_DENIED_FUNCTIONS = frozenset(
    {
        "set_config",
        "load_extension",
        "readfile",
        "writefile",
        "edit",
        "fts3_tokenizer",
        "current_setting",  # harmless to read, but a probe for the wall's own setting
    }
)
_DENIED_PREFIXES = (
    "pg_",
    "dblink",
    "lo_",
    "query_to_",
    "table_to_",
    "cursor_to_",
    "schema_to_",
    "database_to_",
)


@dataclass(frozen=True, slots=True)
class CheckedSql:
    """A statement that passed the guard."""

    kind: str  # select | insert | update | delete
    tables: frozenset[str]  # lower-cased names of every table the statement references
    columns: frozenset[str]  # lower-cased names of every column it names (INSERT lists too)
    whole_rows: bool  # an INSERT without a column list: it writes every column
    parameters: frozenset[str]  # the ``:name`` placeholders it uses
    fingerprint: str  # sha256 of the normalised statement (never of its parameters)


def _refuse(reason: str) -> UnsafeStatement:
    return UnsafeStatement(f"raw SQL refused: {reason}")


def check(sql: object, *, dialect: str, read_only: bool = True) -> CheckedSql:
    """Return what the statement does, or raise :class:`UnsafeStatement` (never anything else)."""
    if not isinstance(sql, str):
        raise _refuse("the statement must be a string")
    if len(sql) > MAX_SQL_LENGTH:
        raise _refuse(f"the statement is longer than {MAX_SQL_LENGTH} characters")
    if not sql.strip():
        raise _refuse("the statement is empty")
    if any(marker in sql for marker in _COMMENT_TOKENS):
        raise _refuse("comments (-- and /* */) are not allowed")
    read = _DIALECTS.get(dialect.lower())
    try:
        statement = _parse_one(sql, read)
        kind = _check_statement(statement, read_only)
        _check_nodes(statement, read_only)
        fingerprint = hashlib.sha256(statement.sql(dialect=read).encode()).hexdigest()
        tables = frozenset(t.name.lower() for t in statement.find_all(exp.Table) if t.name)
        columns, whole_rows = _columns(statement)
        params = frozenset(str(p.name) for p in statement.find_all(exp.Placeholder))
    except UnsafeStatement:
        raise
    except Exception:  # anything sqlglot throws on hostile input: refuse (fail closed)
        raise _refuse("the statement could not be parsed") from None
    return CheckedSql(
        kind=kind,
        tables=tables,
        columns=columns,
        whole_rows=whole_rows,
        parameters=params,
        fingerprint=fingerprint,
    )


def _columns(statement: exp.Expr) -> tuple[frozenset[str], bool]:
    names = {c.name.lower() for c in statement.find_all(exp.Column) if c.name}
    target = statement.this if isinstance(statement, exp.Insert) else None
    if isinstance(target, exp.Schema):
        names.update(e.name.lower() for e in target.expressions if e.name)
    return frozenset(names), isinstance(statement, exp.Insert) and not isinstance(
        target, exp.Schema
    )


def _parse_one(sql: str, read: str | None) -> exp.Expr:
    tokens = sqlglot.Dialect.get_or_raise(read).tokenize(sql)
    if any(token.comments for token in tokens):
        raise _refuse("comments (-- and /* */) are not allowed")
    semicolons = [i for i, token in enumerate(tokens) if token.token_type is TokenType.SEMICOLON]
    if semicolons and semicolons != [len(tokens) - 1]:
        raise _refuse("only one statement is allowed")
    statements = [s for s in sqlglot.parse(sql, read=read) if s is not None]
    if len(statements) != 1:
        raise _refuse("only one statement is allowed" if statements else "the statement is empty")
    return statements[0]


def _check_statement(statement: exp.Expr, read_only: bool) -> str:
    if isinstance(statement, _DDL):
        raise _refuse("DDL (CREATE, DROP, ALTER, TRUNCATE, GRANT) is not allowed")
    if isinstance(statement, _ADMIN):
        raise _refuse("only SELECT, INSERT, UPDATE and DELETE statements are allowed")
    if isinstance(statement, _READ_TOPS):
        return "select"
    if isinstance(statement, _WRITE_TOPS):
        if read_only:
            raise _refuse("a read-only call allows only SELECT (or WITH ... SELECT)")
        return type(statement).__name__.lower()
    raise _refuse("only SELECT, INSERT, UPDATE and DELETE statements are allowed")


def _check_nodes(statement: exp.Expr, read_only: bool) -> None:
    for node in statement.walk():
        if isinstance(node, _DDL):
            raise _refuse("DDL (CREATE, DROP, ALTER, TRUNCATE, GRANT) is not allowed")
        if isinstance(node, _ADMIN):
            raise _refuse("only SELECT, INSERT, UPDATE and DELETE statements are allowed")
        if read_only and isinstance(node, _WRITES):
            raise _refuse("a read-only call allows only SELECT (or WITH ... SELECT)")
        if node is not statement and isinstance(node, _WRITE_TOPS):
            raise _refuse("nested INSERT/UPDATE/DELETE (data-modifying CTEs) are not allowed")
        if isinstance(node, exp.Select) and node.args.get("into"):
            raise _refuse("SELECT ... INTO creates a table (DDL) and is not allowed")
        if isinstance(node, exp.Literal):
            _check_literal(node)
        elif isinstance(node, _STRING_NODES):
            raise _refuse("string literals are not allowed: pass values as :name parameters")
        elif isinstance(node, exp.Placeholder):
            if not node.name or node.name == "?":
                raise _refuse("use :name placeholders for parameters")
        elif isinstance(node, exp.Parameter | exp.SessionParameter):
            raise _refuse("use :name placeholders for parameters")
        elif isinstance(node, exp.Identifier) and not node.quoted and "$" in node.name:
            # SQLite reads ``$name`` as a parameter (and sqlglot as an identifier).
            raise _refuse("use :name placeholders for parameters")
        elif isinstance(node, exp.Func):
            _check_function(node)


def _check_literal(node: exp.Literal) -> None:
    if node.is_string:
        raise _refuse("string literals are not allowed: pass values as :name parameters")
    parent = node.parent
    while parent is not None:
        if isinstance(parent, _NUMBER_OK):
            return
        if isinstance(parent, _PREDICATES):
            raise _refuse(
                "number literals in WHERE/HAVING/JOIN/VALUES/SET are not allowed: "
                "pass values as :name parameters"
            )
        parent = parent.parent


def _check_function(node: exp.Func) -> None:
    names = {node.sql_name().lower()}
    if isinstance(node, exp.Anonymous):
        names.add(str(node.name).lower())
    for name in names:
        if name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES):
            raise _refuse(f"the function {name}() is not allowed in raw SQL")

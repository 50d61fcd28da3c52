"""YAML files validated by pydantic, with errors that name file, line, path and reason.

Used for the gateway config and for the simulator's fault files. A document is kept as YAML nodes
so that any path pydantic reports can be traced back to its line; ``${ENV_VAR}`` and
``${ENV_VAR:-default}`` references are replaced once, at load. A key given twice in one mapping is
an error (PyYAML alone would silently keep the last one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import SafeConstructor

M = TypeVar("M", bound=BaseModel)

DISCRIMINATORS = ("provider", "kind")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path or '<document>'}: {self.reason}"


class ConfigError(Exception):
    """A configuration file was rejected. ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def format_path(loc: tuple[Any, ...]) -> str:
    """``("routes", "chat", 1)`` -> ``routes.chat[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class YamlDocument:
    """A YAML document kept as nodes so that any path can be traced back to its line.

    ``issues`` lists the problems found while loading that the data alone cannot show (a key
    given twice in one mapping); :func:`load_model` reports them with every other problem.
    """

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        try:
            # Two parses on purpose: building the data flattens `<<:` merge keys into the nodes
            # in place, which would hide where each key was written.
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {problem}")]) from None
        except RecursionError:
            raise too_deep(file) from None
        self.issues: list[ConfigIssue] = []
        if self.root is not None:
            try:
                self._find_duplicate_keys(self.root, (), SafeConstructor(), set())
            except RecursionError:
                raise too_deep(file) from None

    def _find_duplicate_keys(
        self,
        node: yaml.Node,
        loc: tuple[Any, ...],
        constructor: SafeConstructor,
        visited: set[int],
    ) -> None:
        """Record every key that repeats an earlier key of its mapping, at the repeat's line.

        Keys are compared as PyYAML compares them when it builds the dict (``yes`` and ``true``
        are the same key), and each node is walked once, however many aliases point at it.
        """
        if id(node) in visited:
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                    ident = constructor.construct_object(key)
                    if ident in first:
                        self.issues.append(
                            ConfigIssue(
                                self.file,
                                line,
                                format_path((*loc, key.value)),
                                f"duplicate key `{key.value}` (first at line {first[ident]})",
                            )
                        )
                    else:
                        first[ident] = line
                part = key.value if isinstance(key, yaml.ScalarNode) else "?"
                self._find_duplicate_keys(value, (*loc, part), constructor, visited)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._find_duplicate_keys(item, (*loc, i), constructor, visited)

    def resolve(self, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
        """Follow ``loc`` through the nodes; return the path that exists and its line.

        pydantic's union tags (``provider: openai`` puts ``openai`` in the path) are skipped; a
        missing key stays in the path and is reported at its parent's line. A repeated key
        resolves to its last occurrence, the one whose value was loaded.
        """
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        kept: list[Any] = []
        tagged = None  # the mapping whose union tag was already skipped
        for part in loc:
            if isinstance(node, yaml.MappingNode) and node is not tagged and _is_tag(node, part):
                tagged = node
                continue
            child = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == str(part):
                        child = (value, key.start_mark.line + 1)  # no break: the last one wins
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = (node.value[part], node.value[part].start_mark.line + 1)
            if child is None:
                if isinstance(node, yaml.MappingNode) and not isinstance(part, int):
                    kept.append(part)
                continue
            node, line = child
            kept.append(part)
        return tuple(kept), line

    def issue(self, loc: tuple[Any, ...], reason: str) -> ConfigIssue:
        path, line = self.resolve(loc)
        return ConfigIssue(self.file, line, format_path(path), reason)


def _is_tag(node: yaml.MappingNode, part: Any) -> bool:
    return any(
        key.value in DISCRIMINATORS and getattr(value, "value", None) == part
        for key, value in node.value
    )


def interpolate(
    value: Any, doc: YamlDocument, issues: list[ConfigIssue], loc: tuple[Any, ...] = ()
) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string.

    ``${VAR:-default}`` gives the default when VAR is unset or empty. ``${VAR}`` with VAR unset or
    empty is recorded in ``issues`` (an empty value must never pass for a key) and replaced by "".
    """
    if isinstance(value, str):
        if "${" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            found = os.environ.get(name)
            if found:
                return found
            if default is not None:
                return default
            ref = f"${{{name}}}"
            if found is None:
                reason = f"environment variable {name} is not set (referenced as {ref})"
            else:
                reason = (
                    f"environment variable {name} is set but empty (referenced as {ref}); "
                    f"set it or give a default with ${{{name}:-value}}"
                )
            issues.append(doc.issue(loc, reason))
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, doc, issues, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, doc, issues, (*loc, i)) for i, v in enumerate(value)]
    return value


def validation_issues(exc: ValidationError, doc: YamlDocument) -> Iterator[ConfigIssue]:
    """pydantic's errors as issues in the words of the file."""
    errors = exc.errors(include_url=False)
    for err in errors:
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "too_short" and any(
            len(o["loc"]) > len(loc) and tuple(o["loc"][: len(loc)]) == loc for o in errors
        ):
            continue  # a list emptied by its own invalid items: the items' errors say why
        ctx = err.get("ctx", {})
        reason = err["msg"]
        if kind == "extra_forbidden":
            reason = "unknown key (check the spelling; see the config reference in README.md)"
        elif kind == "missing":
            reason = "required key is missing"
        elif kind == "value_error":
            reason = reason.removeprefix("Value error, ")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            field = str(ctx.get("discriminator", "")).strip("'")
            expected = str(ctx.get("expected_tags", "")).replace("'", "")
            loc = (*loc, field)
            if kind == "union_tag_invalid":
                reason = f"unknown {field} `{ctx.get('tag')}` (expected one of: {expected})"
            else:
                reason = f"required key is missing: `{field}`" + (
                    f" (one of: {expected})" if expected else ""
                )
        yield doc.issue(loc, reason)


def read_text(path: str | os.PathLike[str]) -> str:
    """A file's text, or :class:`ConfigError` saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), None, "", f"cannot read file: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(path), None, "", "file is not valid UTF-8")]) from None


CrossCheck = Callable[[dict[str, Any], YamlDocument], list[ConfigIssue]]


def load_model(
    model: type[M],
    text: str,
    file: str,
    *,
    expected: str,
    empty_ok: bool = False,
    cross_check: CrossCheck | None = None,
) -> M:
    """Parse, interpolate and validate ``text`` as ``model``; raise :class:`ConfigError`.

    Every problem is reported at once, sorted by line: duplicate keys, unset or empty environment
    variables, schema errors and, when ``cross_check`` is given, the problems it finds in the raw
    document (references between sections). A value whose variable could not be interpolated is
    reported once, for the variable, not again by the schema.
    """
    try:
        return _load_model(model, text, file, expected, empty_ok, cross_check)
    except RecursionError:
        raise too_deep(file) from None


def too_deep(file: str) -> ConfigError:
    """A document nested deeper than the parser can follow (no real config is)."""
    return ConfigError([ConfigIssue(file, None, "", "the document is nested too deeply to read")])


def _load_model(
    model: type[M],
    text: str,
    file: str,
    expected: str,
    empty_ok: bool,
    cross_check: CrossCheck | None,
) -> M:
    doc = YamlDocument(file, text)
    data = doc.data
    if data is None and empty_ok:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "", f"the document must be {expected}")])
    env_issues: list[ConfigIssue] = []
    data = interpolate(data, doc, env_issues)
    issues = [*doc.issues, *env_issues]
    if cross_check is not None:
        issues.extend(cross_check(data, doc))
    result: M | None = None
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        blamed = {(i.line, i.path) for i in env_issues}
        issues.extend(i for i in validation_issues(exc, doc) if (i.line, i.path) not in blamed)
    if issues or result is None:
        raise ConfigError(sorted(issues, key=lambda i: i.line or 0))
    return result

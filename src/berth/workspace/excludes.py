"""Exclude patterns in gitignore syntax.

Supported as git does: ``#`` comments, ``!`` re-includes, a trailing ``/`` matches directories only,
a pattern with a ``/`` before its end is anchored at the workspace root (otherwise it matches a name
at any depth), ``*`` and ``?`` stop at ``/``, ``[...]`` classes, and ``**`` for any number of directories.
The last matching pattern decides; a file inside an excluded directory stays excluded (the directory
is never read), as in git.
"""

from __future__ import annotations

import re

# Caches and build litter nobody wants restored; a session's config can replace the list.
DEFAULT_EXCLUDES = [
    "__pycache__/",
    "*.pyc",
    ".ipynb_checkpoints/",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    "**/.cache/pip/",
    "**/.cache/uv/",
    "**/.cache/pypoetry/",
    "**/.cache/pre-commit/",
    "**/.cache/yarn/",
    "**/.npm/_cacache/",
    "**/node_modules/.cache/",
    ".Trash-*/",
]


def _translate(glob: str) -> str:
    """Regex for a gitignore glob (no leading '!' or trailing '/')."""
    out = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                before_ok = i == 0 or glob[i - 1] == "/"
                after = glob[i + 2:i + 3]
                if before_ok and after == "/":  # "**/": zero or more directories
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                if before_ok and i + 2 == n:  # trailing "/**": everything inside
                    out.append(".*")
                    i += 2
                    continue
                out.append("[^/]*")  # "**" elsewhere acts like "*"
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = glob.find("]", i + 2 if glob[i + 1:i + 2] in ("!", "^") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class Excludes:
    def __init__(self, patterns: list[str] | None):
        # (regex, negated, directories only, matched against the name only); the walk checks every
        # directory on the way down, so a pattern without '/' need only look at the last name.
        self.rules: list[tuple[re.Pattern, bool, bool, bool]] = []
        self._sources: list[str] = []  # each rule's glob, as written (after '!' and '/' handling)
        for raw in patterns or []:
            line = raw.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            if not line.endswith("\\ "):
                line = line.rstrip()
            negated = line.startswith("!")
            if negated or line.startswith("\\!") or line.startswith("\\#"):
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            if not line:
                continue
            on_name = "/" not in line
            self._sources.append(line if not negated else "!" + line)
            self.rules.append((re.compile(_translate(line.lstrip("/")) + r"\Z", re.DOTALL), negated, dir_only, on_name))
        # Fast path: most paths match no rule at all; one combined regex each for names and paths.
        self._fast = {is_dir: (self._combine(is_dir, True), self._combine(is_dir, False)) for is_dir in (True, False)}
        # Faster still for files when every rule that applies to them is "*.ext" (the defaults): endswith.
        file_rules = [raw_rule for raw_rule, (_, _, d, _) in zip(self._sources, self.rules) if not d]
        simple = all(r.startswith("*") and not any(c in r[1:] for c in "*?[\\/!") for r in file_rules)
        self._suffixes = tuple(r[1:] for r in file_rules) if simple and not any(n for _, n, d, _ in self.rules if not d) else None

    def _combine(self, is_dir: bool, on_name: bool) -> re.Pattern | None:
        parts = [r.pattern for r, _, d, n in self.rules if n == on_name and (is_dir or not d)]
        return re.compile("|".join(f"(?:{p})" for p in parts), re.DOTALL) if parts else None

    def excluded(self, path: str, is_dir: bool) -> bool:
        """Whether `path` (relative, '/'-separated) is excluded; parents are checked by the walk itself."""
        if not is_dir and self._suffixes is not None:
            return path.endswith(self._suffixes)
        by_name, by_path = self._fast[is_dir]
        name = path.rpartition("/")[2]
        if not ((by_name and by_name.match(name)) or (by_path and by_path.match(path))):
            return False
        for regex, negated, dir_only, on_name in reversed(self.rules):
            if dir_only and not is_dir:
                continue
            if regex.match(name if on_name else path):
                return not negated
        return False

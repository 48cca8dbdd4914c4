"""Go string and path semantics the hashes depend on.

The reference engine trims with Go's `strings.TrimSpace` and cleans paths with
`filepath.Clean`; both feed content digests and error details, so the few places that need
them share these exact re-implementations instead of Python's near-equivalents
(`str.strip` also strips `\\x1c`-`\\x1f`; `os.path.normpath` keeps a leading `//`).
"""

from __future__ import annotations

# Go's unicode.IsSpace: the Unicode White_Space property.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def go_trim_space(text: str) -> str:
    """`strings.TrimSpace`: strip leading and trailing Unicode white space."""
    return text.strip(GO_SPACE)


def go_clean(path: str) -> str:
    """`filepath.Clean` on POSIX: lexical clean-up; `""` becomes `"."`."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for element in path.split("/"):
        if element in ("", "."):
            continue
        if element == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(element)
    joined = "/".join(parts)
    if rooted:
        return "/" + joined
    return joined or "."


def go_dir(path: str) -> str:
    """`filepath.Dir`: everything but the last element, cleaned."""
    return go_clean(path[: path.rfind("/") + 1])


def go_join(base: str, name: str) -> str:
    """`filepath.Join(base, name)`: join non-empty elements with `/`, then clean."""
    elements = [e for e in (base, name) if e != ""]
    if not elements:
        return ""
    return go_clean("/".join(elements))


def is_abs(path: str) -> bool:
    """`filepath.IsAbs` on POSIX."""
    return path.startswith("/")

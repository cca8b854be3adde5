"""Pages from templates that place each value once, and the escaping their slots need.

A :class:`Template` splits its text at ``{{NAME}}`` slots when it is made; :meth:`Template.render`
joins the literal pieces with the values. A value is never scanned for slots again, so a title
holding ``{{DATA}}`` stays that text. What goes into a slot is the caller's to escape:
:func:`html.escape` for text, :func:`script_json` for data inside a ``<script>`` element.

The pages carry a content-security policy that names the exact inline script and style they
hold by their SHA-256 (:func:`csp_source_hash`): an injected ``<script>`` or ``onerror``
attribute does not match it and does not run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

_SLOT = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")

# "<", ">" and "&" cannot open or close an element, comment or entity once they are JSON
# escapes; U+2028 and U+2029 end a line in older JavaScript string literals.
_SCRIPT_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_SCRIPT_JSON_UNSAFE = re.compile("[<>&\u2028\u2029]")


class Template:
    """A text with named ``{{NAME}}`` slots, each filled exactly once.

    Args:
      text: the template; slot names are upper-case letters, digits and ``_``.

    Example:
      >>> page = Template("<h1>{{TITLE}}</h1><p>{{BODY}}</p>")
      >>> page.slots
      ('TITLE', 'BODY')
      >>> page.render(TITLE="{{BODY}}", BODY="x")
      '<h1>{{BODY}}</h1><p>x</p>'
    """

    def __init__(self, text: str):
        pieces = _SLOT.split(text)
        self._literals = tuple(pieces[0::2])
        self.slots = tuple(pieces[1::2])

    def render(self, **values: str) -> str:
        """The text with every slot replaced by its value (a ``str``), in one pass.

        Raises:
          ValueError: naming the missing or unknown slots, or a value that is not a string.
        """
        missing = sorted(set(self.slots) - set(values))
        extra = sorted(set(values) - set(self.slots))
        if missing or extra:
            raise ValueError(
                f"values must fill exactly the template's slots {sorted(set(self.slots))}; "
                f"missing {missing}, unknown {extra}."
            )
        for name, value in values.items():
            if not isinstance(value, str):
                raise ValueError(f"value of slot {name} must be a str; got {type(value).__name__}.")
        out = [self._literals[0]]
        for name, literal in zip(self.slots, self._literals[1:], strict=True):
            out += [values[name], literal]
        return "".join(out)


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside an HTML ``<script>`` element: ``<``, ``>``, ``&``,
    U+2028 and U+2029 written as ``\\uXXXX`` escapes (the same JSON value).

    Example:
      >>> script_json({"title": "</script><!--<script>"})
      '{"title":"\\\\u003c/script\\\\u003e\\\\u003c!--\\\\u003cscript\\\\u003e"}'
      >>> json.loads(script_json(["a\u2028&b"])) == ["a\u2028&b"]
      True
    """
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return _SCRIPT_JSON_UNSAFE.sub(lambda match: _SCRIPT_JSON_ESCAPES[match.group()], text)


def csp_source_hash(text: str) -> str:
    """The CSP source expression ``'sha256-…'`` that allows exactly the inline script or style
    (or, with ``'unsafe-hashes'``, the style attribute) whose text is ``text``.

    Example:
      >>> csp_source_hash("")
      "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(
    *, scripts: tuple[str, ...] = (), styles: tuple[str, ...] = (), style_attributes=()
) -> str:
    """A policy that fetches nothing, runs only ``scripts`` and applies only ``styles`` (the
    exact texts of the page's inline elements) and the style attributes ``style_attributes``.

    Example:
      >>> content_security_policy(styles=("",)).split("; ")[:2]
      ["default-src 'none'", "script-src 'none'"]
    """
    script_src = " ".join(csp_source_hash(s) for s in scripts) or "'none'"
    style_sources = [csp_source_hash(s) for s in styles]
    attributes = sorted(set(style_attributes))
    if attributes:
        style_sources += ["'unsafe-hashes'"] + [csp_source_hash(a) for a in attributes]
    style_src = " ".join(style_sources) or "'none'"
    return (
        f"default-src 'none'; script-src {script_src}; style-src {style_src}"
        "; img-src data:; base-uri 'none'; form-action 'none'"
    )

"""Griffe extension for klrl's API reference (loaded by mkdocstrings, see ``mkdocs.yml``).

klrl's docstrings are written for ``help()`` and editors as much as for this site. Three things
are adapted when the site is built; the source is left as it is:

- functions made public through ``klrl._src.checks.named`` take their public name as a hidden
  first argument ``where``: it is dropped from the rendered signature;
- names published under a second module with ``_checks.renamed(fn, ...)`` (``klrl.rlvr.load_problem``,
  say) are documented as the function they rename, not as a module attribute;
- Sphinx roles such as ``:func:`levels``` become links when they name a documented object (and
  stay code otherwise), pointers such as ``(docs: theory/best-of-n)`` link to the theory page, and
  a paragraph ending in ``::`` before an indented block ends in ``:``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

# The modules rendered by a ``::: name`` block of a reference page (docs/reference/*.md): names
# they export are linked; anything else named in a role stays plain code.
PUBLIC = tuple(dict.fromkeys(
    m.group(1) for page in sorted((Path(__file__).resolve().parent.parent / "reference").glob("*.md"))
    for m in re.finditer(r"^::: ([\w.]+)", page.read_text(), re.M)))

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`(~?)([A-Za-z_][\w.]*)(\(\))?`")
_DOCS = re.compile(r"\(docs: ([^)]*)\)")
_PAGE = re.compile(r"\btheory/([a-z][a-z-]*)")
_THEORY = Path(__file__).resolve().parent.parent / "theory"
_LITERAL = re.compile(r"(\S)::(\n[ \t]*\n[ \t]+\S)")
_LONE_LITERAL = re.compile(r"\n[ \t]*::[ \t]*(\n[ \t]*\n[ \t]+\S)")


def _walk(obj: griffe.Object):
  yield obj
  for member in obj.members.values():
    if not member.is_alias and member.parent is obj:
      yield from _walk(member)


class KlrlDocs(griffe.Extension):
  """Adapts klrl's docstrings and published names for mkdocstrings (see the module docstring)."""

  def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
    if any(".named(" in str(d.value) for d in func.decorators) and len(func.parameters) and \
        func.parameters[0].name == "where":
      del func.parameters[0]

  def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
    if pkg.name != "klrl":
      return
    collection = loader.modules_collection
    self._renamed(pkg, collection)
    public = self._public(collection)
    for obj in _walk(pkg):
      if obj.docstring is not None:
        obj.docstring.value = self._rewrite(obj, obj.docstring.value, public, collection)

  @staticmethod
  def _renamed(pkg: griffe.Module, collection) -> None:
    """``name = _checks.renamed(fn, "...")`` becomes an alias of ``fn``."""
    for module in [m for m in _walk(pkg) if m.is_module]:
      for name, member in list(module.members.items()):
        value = getattr(member, "value", None) if not member.is_alias and member.is_attribute else None
        if not isinstance(value, griffe.ExprCall) or not str(value.function).endswith("renamed") or not value.arguments:
          continue
        first = value.arguments[0]
        target = getattr(first, "canonical_path", None) or str(first)
        try:
          collection[target]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
          continue
        alias = griffe.Alias(name, target, lineno=member.lineno, endlineno=member.endlineno, parent=module)
        module.set_member(name, alias)

  @staticmethod
  def _public(collection) -> dict[str, str]:
    """Canonical path -> documented public path, for every name a reference page renders."""
    out: dict[str, str] = {}
    for path in PUBLIC:
      try:
        module = collection[path]
      except KeyError:
        continue
      out.setdefault(module.path, path)
      for name in module.exports or ():
        name = str(name)
        try:
          member = module[name]
          target = member.final_target if member.is_alias else member
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
          continue
        if target.is_module:
          if target.path in PUBLIC:
            out.setdefault(target.path, target.path)
          continue
        if not target.docstring:   # not rendered (no docstring), so there is nothing to link to
          continue
        out.setdefault(target.path, f"{path}.{name}")
    return out

  @staticmethod
  def _lookup(obj: griffe.Object, name: str, collection) -> str | None:
    """The canonical path of ``name`` as seen from ``obj``'s scope, or None."""
    head, _, rest = name.partition(".")
    candidates = [name]
    scope = obj
    while scope is not None:
      try:
        resolved = scope.resolve(head)
        candidates.insert(0, resolved + (f".{rest}" if rest else ""))
        break
      except (griffe.NameResolutionError, KeyError):
        scope = scope.parent
    for path in candidates:
      try:
        found = collection[path]
        return (found.final_target if found.is_alias else found).path
      except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        continue
    return None

  def _rewrite(self, obj: griffe.Object, text: str, public: dict[str, str], collection) -> str:
    def link(m: re.Match) -> str:
      tilde, name, call = m.group(1), m.group(2), m.group(3) or ""
      shown = (name.rsplit(".", 1)[-1] if tilde else name) + call
      path = self._lookup(obj, name, collection)
      if path is not None and path in public:
        return f"[`{shown}`][{public[path]}]"
      return f"`{shown}`"

    def page(m: re.Match) -> str:
      name = m.group(1)
      return f"[theory/{name}](../theory/{name}.md)" if (_THEORY / f"{name}.md").exists() else m.group(0)

    text = _ROLE.sub(link, text)
    text = _DOCS.sub(lambda m: "(docs: " + _PAGE.sub(page, m.group(1)) + ")", text)
    text = _LONE_LITERAL.sub(r"\1", text)
    return _LITERAL.sub(r"\1:\2", text)

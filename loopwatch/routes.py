"""Route templates of the request a stall holds, read where each framework keeps them.

Read from the watchdog thread while the loop is stalled, so only plain attributes are read
(an object's own ``__dict__``: no property, descriptor or ``__getattr__`` of the framework
runs, nothing is allocated beyond a frame's locals):

- Starlette and FastAPI: the matched route in the ASGI scope (``scope["route"]``, read by
  :func:`.inflight.route_template`);
- Litestar: the matched route's template in the ASGI scope (``scope["path_template"]``),
  else its handler's only path; :mod:`loopwatch.aiohttp` puts aiohttp's resource's
  canonical name there too;
- Quart (Werkzeug's URL rule, ``request.url_rule.rule``) and Django
  (``request.resolver_match.route``): in the request object held as ``request`` by the
  framework's frames that serve it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import FrameType, MemberDescriptorType
from typing import Any

REQUEST_VARIABLE = "request"


def scope_route(scope: Mapping[str, Any]) -> str | None:
    """The route template Litestar (or :mod:`loopwatch.aiohttp`) puts in the ASGI ``scope``
    (Starlette's is read by :func:`.inflight.route_template`)."""
    template = scope.get("path_template")
    if isinstance(template, str) and template:
        return template
    paths = _slot(scope.get("route_handler"), "paths")  # Litestar before 2.13 or so
    if isinstance(paths, (set, frozenset, list, tuple)) and len(paths) == 1:
        [path] = paths
        return path if isinstance(path, str) else None
    return None


def frame_route(frame: FrameType) -> str | None:
    """The route template of the Quart or Django request ``frame`` holds as ``request``."""
    code = frame.f_code
    if REQUEST_VARIABLE not in code.co_varnames and REQUEST_VARIABLE not in code.co_cellvars:
        return None
    request = _own(frame.f_locals.get(REQUEST_VARIABLE))
    if not request:
        return None
    rule = _own(request.get("url_rule")).get("rule")  # Quart (Werkzeug)
    if isinstance(rule, str):
        return rule
    route = _own(request.get("resolver_match")).get("route")  # Django
    return route if isinstance(route, str) and route else None


def _slot(obj: object, name: str) -> object:
    """The value of slot ``name`` of ``obj`` (a member descriptor: no code of the class
    runs), ``None`` if it has no such slot or it is unset."""
    for cls in type(obj).__mro__:
        member = cls.__dict__.get(name)
        if member is not None:
            if not isinstance(member, MemberDescriptorType):
                return None
            try:
                return member.__get__(obj, type(obj))
            except AttributeError:
                return None
    return None


def _own(obj: object) -> Mapping[str, Any]:
    """``obj``'s own attributes (no property or ``__getattr__`` runs); empty if it has none."""
    if obj is None:
        return {}
    try:
        attributes: Mapping[str, Any] = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return attributes

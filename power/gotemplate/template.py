"""A renderer faithful to Go's text/template, for the TEMPLATE of Ollama models.

    template = Template.parse('{{- range .Messages }}{{ .Role }}: {{ .Content }}\\n{{ end }}')
    text = template.execute({"Messages": [GoStruct("Message", {"Role": "user", "Content": "hi"})]})

Go semantics kept: whitespace trimming, comments, `.Field` chains, `$` and variables with Go's
scoping, `if/else if/with/else with/range/else/end`, `break`/`continue`, `define`/`template`/
`block`, pipelines, parentheses, every Go builtin (`and or not eq ne lt le gt ge len index slice
print printf println html js urlquery call`) and Ollama's additions (`json currentDate
yesterdayDate toTypeScriptType`). Ranging over a map visits its keys in sorted order; ranging
over an int counts from 0. Like Ollama (`missingkey=zero`), a key missing from a map is nil, which
prints as `<no value>`. How Python values stand for Go values is described in
`power.gotemplate.values`.

Errors raise `TemplateError` with the line and column of the failing action.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from power.gotemplate import funcs as gf
from power.gotemplate import values as gv
from power.gotemplate.parse import (
    ActionNode,
    BranchNode,
    BreakNode,
    ChainNode,
    CommandNode,
    ContinueNode,
    DotNode,
    FieldNode,
    IdentifierNode,
    ListNode,
    LiteralNode,
    NilNode,
    Node,
    Parser,
    PipeNode,
    TemplateError,
    TemplateNode,
    TextNode,
    VariableNode,
)
from power.gotemplate.printf import go_sprintf

__all__ = ["BUILTINS", "GoStruct", "Template", "TemplateError"]

GoStruct = gv.GoStruct

#: Builtins whose Go parameters are `reflect.Value`: a literal `nil` argument is an error there.
_VALUE_PARAMS = {
    "and",
    "or",
    "not",
    "len",
    "index",
    "slice",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "call",
}

BUILTINS: dict[str, Callable[..., Any]] = {
    "and": lambda *args: None,  # evaluated lazily by the executor
    "or": lambda *args: None,  # evaluated lazily by the executor
    "not": gv.go_not,
    "eq": gv.go_eq,
    "ne": gv.go_ne,
    "lt": gv.go_lt,
    "le": gv.go_le,
    "gt": gv.go_gt,
    "ge": gv.go_ge,
    "len": gf.go_len,
    "index": gf.go_index,
    "slice": gf.go_slice,
    "print": gv.go_sprint,
    "printf": go_sprintf,
    "println": gv.go_sprintln,
    "html": gf.go_html,
    "js": gf.go_js,
    "urlquery": gf.go_urlquery,
    "call": gf.go_call,
    "json": gf.ollama_json,
    "currentDate": gf.ollama_current_date,
    "yesterdayDate": gf.ollama_yesterday_date,
    "toTypeScriptType": gf.ollama_to_typescript_type,
}

_MISSING: Any = object()  # no final pipeline value
_MAX_DEPTH = 100


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _snake_case(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if (
            ch.isupper()
            and i > 0
            and (not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower()))
        ):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


@attrs.define
class _State:
    """One execution: the variable stack, the output and the template set."""

    templates: Mapping[str, ListNode]
    funcs: Mapping[str, Callable[..., Any]]
    source: str
    out: list[str] = attrs.field(factory=list)
    vars: list[list[Any]] = attrs.field(factory=list)
    depth: int = 0

    def error(self, node: Node, message: str) -> TemplateError:
        pos = node.pos
        line = self.source.count("\n", 0, pos) + 1
        column = pos - (self.source.rfind("\n", 0, pos) + 1) + 1
        return TemplateError(message, line, column)

    # -- variables
    def push(self, name: str, value: Any) -> None:
        self.vars.append([name, value])

    def set_var(self, node: Node, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.error(node, f"undefined variable: {name}")

    def var_value(self, node: Node, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise self.error(node, f"undefined variable: {name}")

    # -- walking
    def walk(self, dot: Any, node: Node) -> None:
        if isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ActionNode):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.print_value(node, value)
        elif isinstance(node, ListNode):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, BranchNode):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                self.walk_if_or_with(dot, node)
        elif isinstance(node, TemplateNode):
            self.walk_template(dot, node)
        elif isinstance(node, BreakNode):
            raise _Break
        elif isinstance(node, ContinueNode):
            raise _Continue
        else:  # pragma: no cover - the parser makes no other nodes
            raise self.error(node, f"unknown node: {node!r}")

    def walk_if_or_with(self, dot: Any, node: BranchNode) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            if callable(value) and not isinstance(value, gv.GoStruct):
                raise self.error(node, f"{node.kind} can't use {value!r}")
            if gv.is_true(value):
                self.walk(value if node.kind == "with" else dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[mark:]

    def walk_range(self, dot: Any, node: BranchNode) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            items = self.range_items(node, value)
            body_mark = len(self.vars)
            decl = node.pipe.decl
            for index, element in items:
                if decl and node.pipe.is_assign:
                    if len(decl) > 1:
                        self.set_var(node, decl[0], index)
                        self.set_var(node, decl[1], element)
                    else:
                        self.set_var(node, decl[0], element)
                elif decl:
                    self.vars[-1][1] = element
                    if len(decl) > 1:
                        self.vars[-2][1] = index
                try:
                    self.walk(element, node.list)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    del self.vars[body_mark:]
            if not items and node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[mark:]

    def range_items(self, node: BranchNode, value: Any) -> list[tuple[Any, Any]]:
        if value is None:
            return []
        if isinstance(value, dict):
            return gv.sorted_items(value)
        if isinstance(value, list | tuple):
            return list(enumerate(value))
        if isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decl) > 1:
                raise self.error(node, f"can't use {value} to iterate over more than one variable")
            return [(i, i) for i in range(value)]
        raise self.error(node, f"range can't iterate over {gv.sprint_value(value)}")

    def walk_template(self, dot: Any, node: TemplateNode) -> None:
        body = self.templates.get(node.name)
        if body is None:
            raise self.error(node, f'no such template "{node.name}"')
        if self.depth >= _MAX_DEPTH:
            raise self.error(node, f"exceeded maximum template depth ({_MAX_DEPTH})")
        new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else None
        inner = _State(
            self.templates, self.funcs, self.source, self.out, [["$", new_dot]], self.depth + 1
        )
        inner.walk(new_dot, body)

    def print_value(self, node: Node, value: Any) -> None:
        if value is None:
            self.out.append("<no value>")
            return
        if (
            callable(value)
            and not isinstance(value, gv.GoStruct)
            and not hasattr(value, "go_string")
        ):
            raise self.error(node, f"can't print {value!r} of type {gv.type_name(value)}")
        self.out.append(gv.sprint_value(value))

    # -- evaluation
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(pipe, name, value)
            else:
                self.push(name, value)
        return value

    def not_a_function(self, node: Node, args: list[Node], final: Any) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise self.error(node, f"can't give argument to non-function {_node_text(args[0])}")

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, ChainNode):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, VariableNode):
            return self.eval_variable(dot, first, cmd.args, final)
        self.not_a_function(first, cmd.args, final)
        if isinstance(first, PipeNode):
            return self.eval_pipeline(dot, first)
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, NilNode):
            raise self.error(first, "nil is not a command")
        if isinstance(first, LiteralNode):
            return first.value
        raise self.error(first, f"can't evaluate command {first!r}")  # pragma: no cover

    def eval_arg(self, dot: Any, node: Node) -> Any:
        if isinstance(node, DotNode):
            return dot
        if isinstance(node, NilNode):
            return None
        if isinstance(node, FieldNode):
            return self.eval_field_chain(dot, dot, node, node.idents, [node], _MISSING)
        if isinstance(node, VariableNode):
            return self.eval_variable(dot, node, [node], _MISSING)
        if isinstance(node, PipeNode):
            return self.eval_pipeline(dot, node)
        if isinstance(node, IdentifierNode):
            return self.eval_function(dot, node, [node], _MISSING)
        if isinstance(node, ChainNode):
            return self.eval_chain(dot, node, [node], _MISSING)
        if isinstance(node, LiteralNode):
            return node.value
        raise self.error(node, f"can't handle {node!r} for arg")  # pragma: no cover

    def eval_variable(self, dot: Any, node: VariableNode, args: list[Node], final: Any) -> Any:
        value = self.var_value(node, node.idents[0])
        if len(node.idents) == 1:
            self.not_a_function(node, args, final)
            return value
        return self.eval_field_chain(dot, value, node, node.idents[1:], args, final)

    def eval_chain(self, dot: Any, node: ChainNode, args: list[Node], final: Any) -> Any:
        base = self.eval_arg(dot, node.node)
        if base is None:
            raise self.error(node, f"indirection through explicit nil in {_node_text(node)}")
        return self.eval_field_chain(dot, base, node, node.fields, args, final)

    def eval_field_chain(
        self, dot: Any, receiver: Any, node: Node, idents: list[str], args: list[Node], final: Any
    ) -> Any:
        for i, name in enumerate(idents):
            last = i == len(idents) - 1
            if receiver is None:
                if i == 0:
                    return None  # an invalid receiver (nil dot or variable) yields no value
                raise self.error(node, f"nil pointer evaluating interface {{}}.{name}")
            receiver = self.eval_field(
                dot, name, node, args if last else [node], final if last else _MISSING, receiver
            )
        return receiver

    def eval_field(
        self, dot: Any, name: str, node: Node, args: list[Node], final: Any, receiver: Any
    ) -> Any:
        has_args = len(args) > 1 or final is not _MISSING
        if isinstance(receiver, dict):
            if has_args:
                raise self.error(node, f"{name} is not a method but has arguments")
            return receiver.get(name)
        if isinstance(receiver, gv.GoStruct):
            if name not in receiver.fields:
                raise self.error(
                    node, f"can't evaluate field {name} in type {gv.type_name(receiver)}"
                )
            if has_args:
                raise self.error(node, f"{name} has arguments but cannot be invoked as function")
            return receiver.fields[name]
        if isinstance(receiver, str | int | float | bytes | list | tuple):
            raise self.error(node, f"can't evaluate field {name} in type {gv.type_name(receiver)}")
        for attribute in (name, _snake_case(name)):
            if attribute.startswith("_") or not hasattr(receiver, attribute):
                continue
            value = getattr(receiver, attribute)
            if inspect.ismethod(value) or inspect.isbuiltin(value):
                call_args = [self.eval_arg(dot, arg) for arg in args[1:]]
                if final is not _MISSING:
                    call_args.append(final)
                return self.call(node, name, value, call_args)
            if has_args:
                raise self.error(node, f"{name} has arguments but cannot be invoked as function")
            return value
        raise self.error(node, f"can't evaluate field {name} in type {gv.type_name(receiver)}")

    def eval_function(self, dot: Any, node: IdentifierNode, args: list[Node], final: Any) -> Any:
        name = node.name
        function = self.funcs.get(name)
        if function is None:
            raise self.error(node, f'"{name}" is not a defined function')
        arg_nodes = args[1:]
        if name in _VALUE_PARAMS:
            for arg in arg_nodes:
                if isinstance(arg, NilNode):
                    raise self.error(arg, "cannot assign nil to reflect.Value")
        if name in ("and", "or") and self.funcs[name] is BUILTINS[name]:
            n_args = len(arg_nodes) + (final is not _MISSING)
            if n_args < 1:
                raise self.error(node, f"wrong number of args for {name}: want at least 1 got 0")
            value = None
            for arg in arg_nodes:
                value = self.eval_arg(dot, arg)
                if gv.is_true(value) == (name == "or"):
                    return value
            return final if final is not _MISSING else value
        values = [self.eval_arg(dot, arg) for arg in arg_nodes]
        if final is not _MISSING:
            values.append(final)
        return self.call(node, name, function, values)

    def call(self, node: Node, name: str, function: Callable[..., Any], values: list[Any]) -> Any:
        signature = _signature(function)
        if signature is not None:
            try:
                signature.bind(*values)
            except TypeError:
                raise self.error(
                    node, f"wrong number of args for {name}: got {len(values)}"
                ) from None
        try:
            return function(*values)
        except gv.GoError as exc:
            raise self.error(node, f"error calling {name}: {exc}") from None
        except TemplateError:
            raise
        except Exception as exc:  # a Python helper failing is a template execution error
            raise self.error(node, f"error calling {name}: {exc}") from exc


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return _cached_signature(function)
    except TypeError:  # an unhashable bound method
        return _uncached_signature(function)


def _uncached_signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


_cached_signature = functools.lru_cache(maxsize=256)(_uncached_signature)


def _node_text(node: Node) -> str:
    if isinstance(node, FieldNode):
        return "." + ".".join(node.idents)
    if isinstance(node, VariableNode):
        return ".".join(node.idents)
    if isinstance(node, LiteralNode):
        return node.text
    if isinstance(node, DotNode):
        return "."
    if isinstance(node, NilNode):
        return "nil"
    if isinstance(node, IdentifierNode):
        return node.name
    if isinstance(node, ChainNode):
        return "(" + _node_text(node.node) + ")." + ".".join(node.fields)
    return "(pipeline)"


# ---------------------------------------------------------------- the public Template


@attrs.define(eq=False)
class Template:
    """A parsed Go template: `Template.parse(source)`, then `execute(data)`.

    `templates` maps each defined name to its tree; `""` is the main template. Instances are
    never changed after parsing: `with_appended_field` and `cut_after_field` return new ones.
    """

    source: str
    templates: dict[str, ListNode]
    funcs: Mapping[str, Callable[..., Any]]
    _identifiers: list[str] | None = attrs.field(default=None, init=False)
    _cuts: dict[str, Template] = attrs.field(factory=dict, init=False)

    @classmethod
    def parse(
        cls, source: str, *, funcs: Mapping[str, Callable[..., Any]] | None = None
    ) -> Template:
        """Parse Go template text; `funcs` adds (or overrides) template functions."""
        all_funcs = dict(BUILTINS)
        if funcs:
            all_funcs.update(funcs)
        templates = Parser(source, all_funcs).parse()
        return cls(source, templates, all_funcs)

    @property
    def root(self) -> ListNode:
        return self.templates[""]

    def execute(self, data: Any) -> str:
        """Render with `data` as `.` and `$`; raises `TemplateError` on a runtime error."""
        state = _State(self.templates, self.funcs, self.source, vars=[["$", data]])
        try:
            state.walk(data, self.root)
        except RecursionError:
            raise TemplateError("exceeded maximum template depth") from None
        return "".join(state.out)

    def identifiers(self) -> list[str]:
        """Every field and variable name the template mentions, lower-cased and sorted.

        This is Ollama's `Template.Vars`: names in field chains (`.Function.Name` gives
        `function` and `name`) and variables (`$.Messages` gives `$` and `messages`), in actions,
        branch conditions and bodies, and template-call arguments of every defined template.
        A `{{template}}` call without an argument raises `TemplateError`, as in Ollama.
        """
        if self._identifiers is None:
            names: set[str] = set()
            for body in self.templates.values():
                _collect_identifiers(body, names)
            self._identifiers = sorted(names)
        return list(self._identifiers)

    def references(self, field: str) -> bool:
        """Whether the template mentions `field` anywhere (case-insensitive, see `identifiers`)."""
        return field.lower() in self.identifiers()

    def with_appended_field(self, field: str) -> Template:
        """A copy with `{{ .field }}` appended to the main template."""
        action = ActionNode(
            PipeNode([], False, [CommandNode([FieldNode([field], pos=len(self.source))])]),
            pos=len(self.source),
        )
        root = ListNode([*self.root.nodes, action], pos=self.root.pos)
        return Template(self.source, {**self.templates, "": root}, self.funcs)

    def cut_after_field(self, field: str) -> Template:
        """A copy of the main template that stops right after the first `.field` it reaches.

        Ollama renders the last turn of a prompt-style template this way: output up to and
        including `{{ .Response }}`, nothing after it. The walk visits text and actions in
        order and the bodies of `if`/`with`/`range` (not their conditions); once the field is
        met, every later node is dropped, and so is the rest of its own action's pipeline.
        """
        if field not in self._cuts:
            root = _cut(self.root, field, [False])
            self._cuts[field] = Template(
                self.source, {**self.templates, "": root or ListNode()}, self.funcs
            )
        return self._cuts[field]


def _collect_identifiers(node: Node | None, names: set[str]) -> None:
    if node is None:
        return
    if isinstance(node, ListNode):
        for child in node.nodes:
            _collect_identifiers(child, names)
    elif isinstance(node, ActionNode):
        _collect_identifiers(node.pipe, names)
    elif isinstance(node, TemplateNode):
        if node.pipe is None:
            raise TemplateError("undefined template specified")
        _collect_identifiers(node.pipe, names)
    elif isinstance(node, BranchNode):
        _collect_identifiers(node.pipe, names)
        _collect_identifiers(node.list, names)
        _collect_identifiers(node.else_list, names)
    elif isinstance(node, PipeNode):
        for cmd in node.cmds:
            for arg in cmd.args:
                _collect_identifiers(arg, names)
    elif isinstance(node, FieldNode | VariableNode):
        names.update(ident.lower() for ident in node.idents)


def _cut(node: Node, field: str, cut: list[bool]) -> Node | None:
    """Ollama's deleteNode with its predicate: drop every node after the first `.field`."""
    if cut[0]:
        return None
    if isinstance(node, FieldNode) and field in node.idents:
        cut[0] = True
        return node
    if isinstance(node, ListNode):
        kept = [c for c in (_cut(child, field, cut) for child in node.nodes) if c is not None]
        return ListNode(kept, pos=node.pos)
    if isinstance(node, BranchNode):
        body = _cut(node.list, field, cut)
        else_list = _cut(node.else_list, field, cut) if node.else_list is not None else None
        return BranchNode(node.kind, node.pipe, body, else_list, pos=node.pos)
    if isinstance(node, ActionNode):
        pipe = _cut(node.pipe, field, cut)
        return None if pipe is None else ActionNode(pipe, pos=node.pos)
    if isinstance(node, PipeNode):
        cmds = []
        for cmd in node.cmds:
            args = [a for a in (_cut(arg, field, cut) for arg in cmd.args) if a is not None]
            if not args:
                return None
            cmds.append(CommandNode(args, pos=cmd.pos))
        return PipeNode(node.decl, node.is_assign, cmds, pos=node.pos) if cmds else None
    return node

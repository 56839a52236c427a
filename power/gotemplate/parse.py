"""Parser for Go's text/template syntax, producing a small tree of attrs nodes.

Follows Go's rules: `{{- ` and ` -}}` trim the white space (space, tab, CR, LF) next to an
action; `{{/* */}}` comments must sit right against their delimiters; variables must be declared
before use and go out of scope at the `{{end}}` of the control structure that declared them;
`{{break}}`/`{{continue}}` only inside `{{range}}`; functions must exist at parse time.
`{{define}}` (top level only), `{{template}}` and `{{block}}` are supported.
Errors raise `TemplateError` carrying the line and column.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import attrs

from power.gotemplate.lex import Lexer, TemplateError, Token

# ---------------------------------------------------------------- nodes


@attrs.define(eq=False)
class Node:
    pos: int = attrs.field(kw_only=True, default=0)


@attrs.define(eq=False)
class TextNode(Node):
    text: str


@attrs.define(eq=False)
class ListNode(Node):
    nodes: list[Node] = attrs.field(factory=list)


@attrs.define(eq=False)
class FieldNode(Node):
    idents: list[str]


@attrs.define(eq=False)
class VariableNode(Node):
    idents: list[str]  # idents[0] is the name with its `$`


@attrs.define(eq=False)
class DotNode(Node):
    pass


@attrs.define(eq=False)
class NilNode(Node):
    pass


@attrs.define(eq=False)
class LiteralNode(Node):
    """A bool, number or string constant."""

    value: Any
    text: str


@attrs.define(eq=False)
class IdentifierNode(Node):
    name: str


@attrs.define(eq=False)
class ChainNode(Node):
    node: Node
    fields: list[str]


@attrs.define(eq=False)
class CommandNode(Node):
    args: list[Node]


@attrs.define(eq=False)
class PipeNode(Node):
    decl: list[str]
    is_assign: bool
    cmds: list[CommandNode]


@attrs.define(eq=False)
class ActionNode(Node):
    pipe: PipeNode


@attrs.define(eq=False)
class BranchNode(Node):
    """`if`, `with` or `range`; `else_list` holds a nested branch for `else if`/`else with`."""

    kind: str
    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None


@attrs.define(eq=False)
class TemplateNode(Node):
    name: str
    pipe: PipeNode | None


@attrs.define(eq=False)
class BreakNode(Node):
    pass


@attrs.define(eq=False)
class ContinueNode(Node):
    pass


# ---------------------------------------------------------------- parser


class Parser:
    """Recursive descent over the tokens into `ListNode` trees, one per defined template."""

    def __init__(self, source: str, functions: Container[str]):
        self.source = source
        self.functions = functions
        self.tokens = Lexer(source, self.error).run()
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.templates: dict[str, ListNode] = {}

    def error(self, message: str, pos: int) -> TemplateError:
        line = self.source.count("\n", 0, pos) + 1
        column = pos - (self.source.rfind("\n", 0, pos) + 1) + 1
        return TemplateError(message, line, column)

    # -- token helpers
    def next(self) -> Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next_non_space(self) -> Token:
        token = self.next()
        while token.kind == "space":
            token = self.next()
        return token

    def peek_non_space(self) -> Token:
        j = self.i
        while self.tokens[j].kind == "space":
            j += 1
        return self.tokens[j]

    def expect(self, kind: str, context: str) -> Token:
        token = self.next_non_space()
        if token.kind != kind:
            raise self.unexpected(token, context)
        return token

    def unexpected(self, token: Token, context: str) -> TemplateError:
        shown = (
            {"right": "}}", "eof": "EOF", "left": "{{"}.get(token.kind)
            or token.text
            or str(token.value)
        )
        return self.error(f"unexpected {shown!r} in {context}", token.pos)

    # -- structure
    def parse(self) -> dict[str, ListNode]:
        root = ListNode(pos=0)
        while self.peek().kind != "eof":
            if self.peek().kind == "left":
                save = self.i
                self.next()
                token = self.next_non_space()
                if token.kind == "keyword" and token.value == "define":
                    self.parse_definition(token)
                    continue
                self.i = save
            node = self.text_or_action()
            if isinstance(node, _EndOrElse):
                raise self.error(f"unexpected {{{{{node.word}}}}}", node.pos)
            if node is not None:
                root.nodes.append(node)
        self.templates[""] = root
        return self.templates

    def parse_definition(self, token: Token) -> None:
        name_token = self.next_non_space()
        if name_token.kind != "string":
            raise self.unexpected(name_token, "define clause")
        self.expect("right", "define clause")
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self.item_list()
        if end.word != "end":
            raise self.error("unexpected {{else}} in define", end.pos)
        self.vars = saved_vars
        self.templates[name_token.value] = body

    def item_list(self) -> tuple[ListNode, _EndOrElse]:
        items = ListNode(pos=self.peek().pos)
        while True:
            if self.peek().kind == "eof":
                raise self.error("unexpected EOF", self.peek().pos)
            node = self.text_or_action()
            if isinstance(node, _EndOrElse):
                return items, node
            if node is not None:
                items.nodes.append(node)

    def text_or_action(self) -> Node | _EndOrElse | None:
        token = self.next_non_space()
        if token.kind == "text":
            return TextNode(token.value, pos=token.pos)
        if token.kind == "left":
            return self.action()
        raise self.unexpected(token, "input")

    def action(self) -> Node | _EndOrElse:
        start = self.i
        token = self.next_non_space()
        if token.kind == "keyword":
            word = token.value
            if word in ("if", "range", "with"):
                return self.control(word, token.pos)
            if word == "end":
                self.expect("right", "end")
                return _EndOrElse("end", token.pos)
            if word == "else":
                peek = self.peek_non_space()
                if peek.kind == "keyword" and peek.value in ("if", "with"):
                    return _EndOrElse("else", token.pos, chained=True)
                self.expect("right", "else")
                return _EndOrElse("else", token.pos)
            if word in ("break", "continue"):
                self.expect("right", word)
                if self.range_depth == 0:
                    raise self.error(f"{{{{{word}}}}} outside {{{{range}}}}", token.pos)
                return BreakNode(pos=token.pos) if word == "break" else ContinueNode(pos=token.pos)
            if word == "template":
                return self.template_call(token)
            if word == "block":
                return self.block(token)
            raise self.error(f"unexpected {word!r} in command", token.pos)
        self.i = start
        return ActionNode(self.pipeline("command", "right"), pos=token.pos)

    def control(self, context: str, pos: int) -> BranchNode:
        mark = len(self.vars)
        pipe = self.pipeline(context, "right")
        if context == "range":
            self.range_depth += 1
        body, end = self.item_list()
        if context == "range":
            self.range_depth -= 1
        else_list = None
        if end.word == "else":
            if end.chained:
                keyword = self.next_non_space()
                if keyword.value != context:
                    raise self.error(
                        f"unexpected {keyword.value!r} after {{{{else}}}} in {context}", keyword.pos
                    )
                else_list = ListNode([self.control(context, keyword.pos)], pos=end.pos)
            else:
                else_list, end = self.item_list()
                if end.word != "end":
                    raise self.error("expected end; found {{else}}", end.pos)
        del self.vars[mark:]
        return BranchNode(context, pipe, body, else_list, pos=pos)

    def template_call(self, token: Token) -> TemplateNode:
        name = self.next_non_space()
        if name.kind != "string":
            raise self.unexpected(name, "template clause")
        pipe = None
        if self.peek_non_space().kind != "right":
            pipe = self.pipeline("template", "right")
        else:
            self.next_non_space()
        return TemplateNode(name.value, pipe, pos=token.pos)

    def block(self, token: Token) -> TemplateNode:
        name = self.next_non_space()
        if name.kind != "string":
            raise self.unexpected(name, "block clause")
        pipe = self.pipeline("block", "right")
        saved_vars, self.vars = self.vars, ["$"]
        saved_depth, self.range_depth = self.range_depth, 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved_vars, saved_depth
        if end.word != "end":
            raise self.error("unexpected {{else}} in block", end.pos)
        self.templates[name.value] = body
        return TemplateNode(name.value, pipe, pos=token.pos)

    # -- pipelines
    def pipeline(self, context: str, end: str) -> PipeNode:
        start = self.peek_non_space().pos
        decl: list[str] = []
        is_assign = False
        while self.peek_non_space().kind == "var":
            save = self.i
            var = self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.kind in ("declare", "assign"):
                self.next_non_space()
                is_assign = nxt.kind == "assign"
                decl.append(var.value)
                self.vars.append(var.value)
                break
            if nxt.kind == "comma":
                self.next_non_space()
                decl.append(var.value)
                self.vars.append(var.value)
                if (
                    context == "range"
                    and len(decl) < 2
                    and self.peek_non_space().kind in ("var", "right", "rparen")
                ):
                    continue
                raise self.error(f"too many declarations in {context}", var.pos)
            self.i = save
            break
        cmds: list[CommandNode] = []
        while True:
            token = self.peek_non_space()
            if token.kind == end:
                self.next_non_space()
                break
            if token.kind in (
                "bool",
                "number",
                "dot",
                "field",
                "ident",
                "nil",
                "string",
                "var",
                "lparen",
            ):
                cmds.append(self.command())
            else:
                self.next_non_space()
                raise self.unexpected(token, "operand")
        if not cmds:
            raise self.error(f"missing value for {context}", start)
        for i, cmd in enumerate(cmds[1:], start=1):
            if isinstance(cmd.args[0], LiteralNode | DotNode | NilNode):
                raise self.error(f"non executable command in pipeline stage {i + 1}", cmd.pos)
        return PipeNode(decl, is_assign, cmds, pos=start)

    def command(self) -> CommandNode:
        args: list[Node] = []
        pos = self.peek_non_space().pos
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            token = self.next()
            if token.kind == "space":
                continue
            if token.kind in ("right", "rparen"):
                self.i -= 1
            elif token.kind != "pipe":
                raise self.unexpected(token, "operand")
            break
        if not args:
            raise self.error("empty command", pos)
        return CommandNode(args, pos=pos)

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().kind != "field":
            return node
        fields = []
        while self.peek().kind == "field":
            fields.append(self.next().value[1:])
        if isinstance(node, FieldNode):
            return FieldNode(node.idents + fields, pos=node.pos)
        if isinstance(node, VariableNode):
            return VariableNode(node.idents + fields, pos=node.pos)
        if isinstance(node, LiteralNode | NilNode | DotNode):
            raise self.error("unexpected . after term", node.pos)
        return ChainNode(node, fields, pos=node.pos)

    def term(self) -> Node | None:
        token = self.next_non_space()
        kind = token.kind
        if kind == "ident":
            if token.value not in self.functions:
                raise self.error(f'function "{token.value}" not defined', token.pos)
            return IdentifierNode(token.value, pos=token.pos)
        if kind == "dot":
            return DotNode(pos=token.pos)
        if kind == "nil":
            return NilNode(pos=token.pos)
        if kind == "var":
            if token.value not in self.vars:
                raise self.error(f'undefined variable "{token.value}"', token.pos)
            return VariableNode([token.value], pos=token.pos)
        if kind == "field":
            return FieldNode([token.value[1:]], pos=token.pos)
        if kind in ("bool", "number", "string"):
            return LiteralNode(token.value, token.text, pos=token.pos)
        if kind == "lparen":
            return self.pipeline("parenthesized pipeline", "rparen")
        self.i -= 1
        return None


@attrs.define
class _EndOrElse:
    word: str
    pos: int
    chained: bool = False

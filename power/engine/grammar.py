"""Constrained generation: JSON schema -> GBNF, and llama.cpp's grammar as a token filter.

- `json_schema_to_gbnf(schema)` writes a GBNF grammar (llama.cpp's grammar language) whose
  sentences are the JSON texts valid under `schema` (see the function for what is supported).
- `JSON_GBNF` is the grammar of `format: "json"`: any JSON object.
- `GrammarConstraint` wraps llama.cpp's grammar sampler through the low-level ctypes API and
  answers the `power.engine.sampling.TokenConstraint` protocol: which candidate tokens may come
  next (`allowed`) and advancing past a token (`accept`). End-of-generation tokens are allowed
  only once the grammar is complete.

The grammar sampler is a C object: `close()` frees it (the `SequenceSampler` that owns the
constraint calls it when the sequence ends). A constraint is used by one thread at a time.
"""

from __future__ import annotations

import ctypes
import json
import re
from typing import Any

import numpy as np

#: Whitespace between JSON tokens: bounded, so a model cannot loop on blanks forever.
_SPACE_RULE = r'space ::= | " " | "\n" [ \t]{0,20}'

_PRIMITIVE_RULES: dict[str, str] = {
    "space": _SPACE_RULE.split(" ::= ", 1)[1],
    "boolean": '"true" | "false"',
    "null": '"null"',
    "integral-part": "[0] | [1-9] [0-9]{0,15}",
    "decimal-part": "[0-9]{1,16}",
    "integer": '"-"? integral-part',
    "number": '"-"? integral-part ("." decimal-part)? ([eE] [-+]? integral-part)?',
    "char": r'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt/] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "value": "object | array | string | number | boolean | null",
    "object": (
        '"{" space ( string space ":" space value '
        '( space "," space string space ":" space value )* space )? "}"'
    ),
    "array": '"[" space ( value ( space "," space value )* space )? "]"',
    "date": '[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )',
    "time": (
        '( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? '
        '( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )'
    ),
    "date-time": 'date "T" time',
    "uuid": (
        '[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
        "[0-9a-fA-F]{12}"
    ),
}
_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "integer": ("integral-part",),
    "number": ("integral-part", "decimal-part"),
    "string": ("char",),
    "value": ("object", "array", "string", "number", "boolean", "null"),
    "object": ("string", "value", "space"),
    "array": ("value", "space"),
    "date-time": ("date", "time"),
}
_STRING_FORMATS = ("date", "time", "date-time", "uuid")


def _grammar_text(root_body: str, rules: dict[str, str], used: set[str]) -> str:
    lines = [f"root ::= {root_body}"]
    lines += [f"{name} ::= {body}" for name, body in rules.items()]
    lines += [f"{name} ::= {_PRIMITIVE_RULES[name]}" for name in sorted(used)]
    return "\n".join(lines) + "\n"


def _with_dependencies(names: set[str]) -> set[str]:
    out: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in out:
            out.add(name)
            pending.extend(_DEPENDENCIES.get(name, ()))
    return out


#: The grammar of `format: "json"`: one JSON object (any keys, any values).
JSON_GBNF = _grammar_text("object", {}, _with_dependencies({"object"}))


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _repeat(minimum: int, maximum: int | None) -> str:
    """A GBNF repetition suffix for minimum..maximum occurrences."""
    if maximum is None:
        return "*" if minimum == 0 else ("+" if minimum == 1 else f"{{{minimum},}}")
    if minimum == 0 and maximum == 1:
        return "?"
    return f"{{{minimum},{maximum}}}"


class SchemaError(ValueError):
    """The JSON schema uses something the converter cannot express."""


class _Converter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.used: set[str] = set()
        self.refs: dict[str, str] = {}

    # -------------------------------------------------------------- rules
    def rule(self, name: str, body: str) -> str:
        """Add `name ::= body` (renamed if the name is taken by another body); its name."""
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-") or "rule"
        if base in _PRIMITIVE_RULES or base == "root":
            base = f"{base}-r"
        candidate, n = base, 1
        while candidate in self.rules and self.rules[candidate] != body:
            n += 1
            candidate = f"{base}-{n}"
        self.rules[candidate] = body
        return candidate

    def primitive(self, name: str) -> str:
        self.used |= _with_dependencies({name})
        return name

    # -------------------------------------------------------------- schemas
    def visit(self, schema: Any, name: str) -> str:
        """A GBNF expression for the JSON texts valid under `schema`."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise SchemaError(f"{name}: a false schema matches nothing")
        if not isinstance(schema, dict):
            raise SchemaError(f"{name}: a schema must be an object, got {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "const" in schema:
            return gbnf_literal(json.dumps(schema["const"]))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{name}: enum must be a non-empty array")
            options = " | ".join(gbnf_literal(json.dumps(v)) for v in values)
            return f"({options})"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alternatives = [self.visit(sub, f"{name}-{i}") for i, sub in enumerate(schema[key])]
                return self.rule(name, " | ".join(alternatives))
        if "allOf" in schema:
            return self.visit(self.merge(schema), name)
        kind = schema.get("type")
        if isinstance(kind, list):
            alternatives = [self.visit({**schema, "type": t}, f"{name}-{t}") for t in kind]
            return self.rule(name, " | ".join(alternatives))
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.primitive("value")
        if kind == "object":
            return self.object(schema, name)
        if kind == "array":
            return self.array(schema, name)
        if kind == "string":
            return self.string(schema, name)
        if kind == "integer":
            if self._non_negative(schema):
                return self.primitive("integral-part")
            return self.primitive("integer")
        if kind in ("number", "boolean", "null"):
            return self.primitive(kind)
        raise SchemaError(f"{name}: unknown type {kind!r}")

    def _space(self) -> None:
        self.primitive("space")

    @staticmethod
    def _non_negative(schema: dict[str, Any]) -> bool:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return isinstance(low, int | float) and low >= 0

    def ref(self, pointer: str) -> str:
        if pointer in self.refs:
            return self.refs[pointer]
        if not pointer.startswith("#"):
            raise SchemaError(f"only local references are supported, not {pointer!r}")
        target: Any = self.root
        for part in [p for p in pointer[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"unresolvable reference {pointer!r}")
            target = target[part]
        # reserve the name first: the definition may refer to itself
        name = self.rule("ref-" + pointer.rsplit("/", 1)[-1], f"<reserved for {pointer}>")
        self.refs[pointer] = name
        self.rules[name] = self.visit(target, name + "-body")
        return name

    def merge(self, schema: dict[str, Any]) -> dict[str, Any]:
        """allOf of object schemas, merged into one (properties and required united)."""
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            while isinstance(sub, dict) and "$ref" in sub:
                sub = self._resolve(sub["$ref"])
            if not isinstance(sub, dict):
                raise SchemaError("allOf entries must be schemas")
            for key, value in sub.items():
                if key == "properties":
                    merged.setdefault("properties", {}).update(value)
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                else:
                    merged.setdefault(key, value)
        return merged

    def _resolve(self, pointer: str) -> Any:
        target: Any = self.root
        for part in [p for p in pointer.lstrip("#").split("/") if p]:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target

    def object(self, schema: dict[str, Any], name: str) -> str:
        self._space()
        properties: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        unknown = required - set(properties)
        additional = schema.get("additionalProperties", False)

        def pair(key: str, sub: Any) -> str:
            value = self.visit(sub, f"{name}-{key}")
            return self.rule(
                f"{name}-{key}-kv", f'{gbnf_literal(json.dumps(key))} space ":" space {value}'
            )

        pairs = {key: pair(key, sub) for key, sub in properties.items()}
        for key in sorted(unknown):  # required but undeclared: any value
            pairs[key] = pair(key, True)
        mandatory = [pairs[k] for k in pairs if k in required]
        optional = [pairs[k] for k in pairs if k not in required]
        extra = None
        if additional is True or isinstance(additional, dict):
            value = self.visit(True if additional is True else additional, f"{name}-additional")
            self.primitive("string")
            extra = self.rule(f"{name}-additional-kv", f'string space ":" space {value}')
        extra_tail = f' ( space "," space {extra} )*' if extra else ""
        # rest-i: any subset, in declared order, of optional[i:], each preceded by a comma
        rests: list[str] = [""] * (len(optional) + 1)
        rests[len(optional)] = extra_tail.strip()
        for i in range(len(optional) - 1, -1, -1):
            body = f'( space "," space {optional[i]} )? {rests[i + 1]}'.strip()
            rests[i] = self.rule(f"{name}-rest-{i}", body)
        if mandatory:
            inner = ' space "," space '.join(mandatory)
            if optional:
                inner += f" {rests[0]}"
            elif extra:
                inner += extra_tail
            return self.rule(name, f'"{{" space {inner} space "}}"')
        starts = [f"{optional[i]} {rests[i + 1]}".strip() for i in range(len(optional))]
        if extra:
            starts.append(f"{extra}{extra_tail}")
        if not starts:
            return self.rule(name, '"{" space "}"')
        return self.rule(name, f'"{{" space ( ( {" | ".join(starts)} ) space )? "}}"')

    def array(self, schema: dict[str, Any], name: str) -> str:
        self._space()
        if "prefixItems" in schema:
            items = [self.visit(sub, f"{name}-{i}") for i, sub in enumerate(schema["prefixItems"])]
            if not items:
                return self.rule(name, '"[" space "]"')
            inner = ' space "," space '.join(items)
            return self.rule(name, f'"[" space {inner} space "]"')
        item = self.visit(schema.get("items", True), f"{name}-item")
        minimum = int(schema.get("minItems", 0))
        maximum = schema.get("maxItems")
        maximum = None if maximum is None else int(maximum)
        if maximum is not None and maximum < minimum:
            raise SchemaError(f"{name}: maxItems < minItems")
        if maximum == 0:
            return self.rule(name, '"[" space "]"')
        more = _repeat(max(minimum - 1, 0), None if maximum is None else maximum - 1)
        body = f'{item} ( space "," space {item} ){more} space'
        if minimum == 0:
            body = f"( {body} )?"
        return self.rule(name, f'"[" space {body} "]"')

    def string(self, schema: dict[str, Any], name: str) -> str:
        fmt = schema.get("format")
        if fmt in _STRING_FORMATS:
            self.primitive(fmt)
            return self.rule(name, f'"\\"" {fmt} "\\""')
        minimum = int(schema.get("minLength", 0))
        maximum = schema.get("maxLength")
        if minimum == 0 and maximum is None:
            return self.primitive("string")
        self.primitive("char")
        repeat = _repeat(minimum, None if maximum is None else int(maximum))
        return self.rule(name, f'"\\"" char{repeat} "\\""')


def json_schema_to_gbnf(schema: dict[str, Any] | bool) -> str:
    """A GBNF grammar (root rule `root`) for the JSON texts valid under `schema`.

    Supported: `type` (object, array, string, number, integer, boolean, null, or a list of
    them), `properties` / `required` / `additionalProperties` (absent means no other keys, as
    llama.cpp and Ollama treat it; properties come in declared order, optional ones may be left
    out), `items` / `prefixItems` / `minItems` / `maxItems`, `enum`, `const`, `anyOf`, `oneOf`,
    `allOf` of object schemas (merged), local `$ref` (`#/$defs/...`, `#/definitions/...`,
    recursion included), string `minLength` / `maxLength` and the formats date, time,
    date-time and uuid, `minimum >= 0` for integers. Ignored (the grammar is then looser than
    the schema): `pattern`, other numeric bounds, `uniqueItems`, other formats. Raises
    `SchemaError` (a ValueError) for what cannot be expressed.
    """
    converter = _Converter(schema if isinstance(schema, dict) else {})
    root = converter.visit(schema, "schema")
    return _grammar_text(root, converter.rules, converter.used)


# ---------------------------------------------------------------------- llama.cpp grammar

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarError(ValueError):
    """The grammar does not parse, or a token it forbids was accepted."""


class GrammarConstraint:
    """llama.cpp's grammar sampler as a token filter (`TokenConstraint`).

    `vocab` is a `llama_vocab *` that must outlive this object; `grammar` is GBNF text whose
    start rule is `root`. Raises `GrammarError` if llama.cpp cannot parse the grammar.
    """

    def __init__(self, vocab: Any, grammar: str, root: str = "root") -> None:
        import llama_cpp

        self._llama = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar.encode("utf-8"), root.encode("utf-8")
        )
        if not self._sampler:
            raise GrammarError("llama.cpp could not parse the grammar")
        self.grammar = grammar

    def allowed(
        self, candidate_ids: np.ndarray, candidate_logits: np.ndarray | None = None
    ) -> np.ndarray:
        """Which of `candidate_ids` the grammar allows next (a boolean mask). The logits are
        not needed: the grammar's answer does not depend on them."""
        if self._sampler is None:
            raise GrammarError("grammar constraint is closed")
        ids = np.asarray(candidate_ids)
        data = np.zeros(ids.size, dtype=_TOKEN_DATA)
        data["id"] = ids
        llama = self._llama
        array = llama.llama_token_data_array(
            data=data.ctypes.data_as(ctypes.POINTER(llama.llama_token_data)),
            size=ids.size,
            selected=-1,
            sorted=False,
        )
        llama.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return np.isfinite(data["logit"])

    def accept(self, token: int) -> None:
        """Advance past `token`. Raises GrammarError if the grammar forbids it (llama.cpp would
        abort the process)."""
        if not self.allowed(np.array([token]))[0]:
            raise GrammarError(f"token {token} is not allowed by the grammar here")
        self._llama.llama_sampler_accept(self._sampler, int(token))

    def close(self) -> None:
        """Free the C sampler. Idempotent."""
        if self._sampler is not None:
            self._llama.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

"""Go text/template semantics, case by case (expected outputs follow Go's documented rules)."""

from __future__ import annotations

import datetime

import attrs
import pytest

from power.gotemplate.template import GoStruct, Template, TemplateError
from power.gotemplate.values import format_float_json, format_float_v


def render(source: str, data: object = None) -> str:
    return Template.parse(source).execute({} if data is None else data)


# ---------------------------------------------------------------- trimming and comments


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a  {{- 1 -}}  b", "a1b"),
        ("a {{ 1 }} b", "a 1 b"),
        ("a\n\t {{- 1 }}\n b", "a1\n b"),
        ("a{{ 1 -}}\n\n  {{ 2 }}", "a12"),
        ("{{-3}}", "-3"),  # a number, not a trim marker
        ("{{ 3 -}} x", "3x"),
        ("x\n\t {{- /* comment */ -}} \n y", "xy"),
        ("{{/* a\nmultiline comment */}}z", "z"),
        ("a {{- /* c */}} b", "a b"),
        ("no actions at all\n", "no actions at all\n"),
    ],
)
def test_trimming_and_comments(source: str, expected: str) -> None:
    assert render(source) == expected


# ---------------------------------------------------------------- fields and data


@attrs.define
class Person:
    name: str
    tool_calls: list[str] = attrs.field(factory=list)

    def greet(self, other: str) -> str:
        return f"hi {other}, I am {self.name}"


def test_fields_on_maps_structs_and_objects() -> None:
    data = {
        "A": {"B": "x"},
        "S": GoStruct("T", {"Role": "user", "N": 1}),
        "P": Person("ann", ["c1"]),
    }
    assert render("{{ .A.B }} {{ .S.Role }} {{ .S.N }}", data) == "x user 1"
    # Go-style names resolve to snake_case attributes; methods take arguments.
    assert (
        render("{{ .P.Name }} {{ .P.ToolCalls }} {{ .P.Greet .A.B }}", data)
        == "ann [c1] hi x, I am ann"
    )
    assert render('{{ "y" | .P.Greet }}', data) == "hi y, I am ann"


def test_missing_map_keys_are_nil() -> None:
    # Ollama executes with missingkey=zero: a missing key of map[string]any is nil.
    assert render("[{{ .Missing }}]") == "[<no value>]"
    assert render("{{ if .Missing }}y{{ else }}n{{ end }}") == "n"
    with pytest.raises(TemplateError, match="nil pointer evaluating"):
        render("{{ .Missing.B }}")


def test_unknown_struct_field_is_an_error() -> None:
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        render("{{ .S.Nope }}", {"S": GoStruct("T", {"A": 1})})
    with pytest.raises(TemplateError, match="can't evaluate field X in type string"):
        render("{{ .S.X }}", {"S": "text"})


def test_dollar_is_the_root_inside_range_and_with() -> None:
    data = {"L": [1, 2], "X": "r", "W": {"Y": "w"}}
    assert render("{{ range .L }}{{ . }}{{ $.X }}{{ end }}", data) == "1r2r"
    assert render("{{ with .W }}{{ .Y }}{{ $.X }}{{ end }}", data) == "wr"


def test_printing_values() -> None:
    data = {
        "L": ["a", "b"],
        "M": {"b": 1, "a": "<x>"},
        "S": GoStruct("T", {"A": 1, "B": "x"}),
        "P": GoStruct("T", {"A": 1}, pointer=True),
        "F": 2.5,
        "T": True,
    }
    assert render("{{ .L }}|{{ .M }}|{{ .S }}|{{ .P }}|{{ .F }}|{{ .T }}", data) == (
        "[a b]|map[a:<x> b:1]|{1 x}|&{1}|2.5|true"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (100000.0, "100000"),
        (1234567.0, "1.234567e+06"),
        (-2.5, "-2.5"),
        (float("inf"), "+Inf"),
    ],
)
def test_float_printing_follows_go_v_verb(value: float, expected: str) -> None:
    assert format_float_v(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, "1"), (0.5, "0.5"), (1e20, "100000000000000000000"), (1e21, "1e+21"), (1e-7, "1e-7")],
)
def test_float_json_follows_encoding_json(value: float, expected: str) -> None:
    assert format_float_json(value) == expected


# ---------------------------------------------------------------- variables


def test_variable_assignment_reaches_the_outer_scope() -> None:
    assert render("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}") == "2"
    assert (
        render(
            '{{ $s := "" }}{{ range .L }}{{ $s = printf "%s%d" $s . }}{{ end }}{{ $s }}',
            {"L": [1, 2, 3]},
        )
        == "123"
    )


def test_variables_go_out_of_scope_at_end() -> None:
    with pytest.raises(TemplateError, match='undefined variable "\\$y"'):
        Template.parse("{{ if true }}{{ $y := 3 }}{{ end }}{{ $y }}")
    with pytest.raises(TemplateError, match="undefined variable"):
        Template.parse("{{ $nope }}")


def test_declaration_prints_nothing() -> None:
    assert render("a{{ $x := 5 }}b{{ $x }}") == "ab5"


# ---------------------------------------------------------------- control structures


def test_range_over_list_map_and_int() -> None:
    data = {"L": ["a", "b"], "M": {"z": 1, "a": 2, "m": 3}}
    assert render("{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ end }}", data) == "0=a;1=b;"
    assert render("{{ range $e := .L }}{{ $e }}{{ end }}", data) == "ab"
    # Map keys are visited in sorted order.
    assert render("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", data) == "a2m3z1"
    assert render("{{ range .M }}{{ . }}{{ end }}", data) == "231"
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"


def test_range_else_and_nil() -> None:
    data = {"E": [], "N": None}
    assert render("{{ range .E }}x{{ else }}none{{ end }}", data) == "none"
    assert render("{{ range .N }}x{{ else }}nil{{ end }}", data) == "nil"
    with pytest.raises(TemplateError, match="range can't iterate over"):
        render("{{ range .S }}{{ end }}", {"S": "text"})


def test_break_and_continue() -> None:
    source = "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert render(source, {"L": [1, 2, 3, 4, 5]}) == "13"
    with pytest.raises(TemplateError, match="outside"):
        Template.parse("{{ break }}")
    with pytest.raises(TemplateError, match="outside"):
        Template.parse("{{ range .L }}{{ else }}{{ continue }}{{ end }}")


@pytest.mark.parametrize(("n", "expected"), [(1, "one"), (2, "two"), (3, "many")])
def test_else_if(n: int, expected: str) -> None:
    source = "{{ if eq .N 1 }}one{{ else if eq .N 2 }}two{{ else }}many{{ end }}"
    assert render(source, {"N": n}) == expected


def test_with_and_else_with() -> None:
    source = "{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}"
    assert render(source, {"A": "x", "B": "y"}) == "a=x"
    assert render(source, {"A": "", "B": "y"}) == "b=y"
    assert render(source, {"A": 0, "B": []}) == "none"


@pytest.mark.parametrize("value", [0, 0.0, "", [], {}, None, False])
def test_empty_values_are_false(value: object) -> None:
    assert render("{{ if .V }}t{{ else }}f{{ end }}", {"V": value}) == "f"


@pytest.mark.parametrize("value", [1, -1, 0.5, "a", [0], {"k": 0}, True, GoStruct("T", {})])
def test_non_empty_values_are_true(value: object) -> None:
    assert render("{{ if .V }}t{{ else }}f{{ end }}", {"V": value}) == "t"


def test_define_template_and_block() -> None:
    source = '{{ define "T" }}[{{ . }}]{{ end }}{{ template "T" "x" }}{{ block "B" 2 }}<{{ . }}>{{ end }}'
    assert render(source) == "[x]<2>"
    assert render('{{ define "T" }}{{ .X }}{{ end }}{{ template "T" }}') == "<no value>"
    with pytest.raises(TemplateError, match="no such template"):
        render('{{ template "nope" . }}')


# ---------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ and 1 "" 2 }}', ""),
        ("{{ and 1 2 }}", "2"),
        ('{{ or 0 "" "z" }}', "z"),
        ('{{ or 0 "" }}', ""),
        ("{{ or 1 .Missing.X }}", "1"),  # short-circuit: the error is never evaluated
        ("{{ and 0 .Missing.X }}", "0"),
        ("{{ not 0 }} {{ not 1 }}", "true false"),
        ("{{ eq 1 2 3 1 }} {{ eq 1 2 }}", "true false"),
        ('{{ eq "a" "a" }} {{ eq .Missing "x" }}', "true false"),
        ("{{ ne 1 2 }} {{ ne 1 1 }}", "true false"),
        (
            '{{ lt 1 2 }} {{ lt "b" "a" }} {{ le 2 2 }} {{ gt 3 2 }} {{ ge 1 2 }}',
            "true false true true false",
        ),
        ("{{ eq 2.5 2.5 }}", "true"),
    ],
)
def test_logic_and_comparison(source: str, expected: str) -> None:
    assert render(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ eq 1 1.0 }}", "incompatible types for comparison"),
        ("{{ lt 1 2.5 }}", "incompatible types for comparison"),
        ("{{ lt true false }}", "invalid type for comparison"),
        ("{{ eq .L .L }}", "non-comparable"),
        ("{{ eq 1 }}", "missing argument for comparison"),
        ("{{ eq .X nil }}", "cannot assign nil"),
        ("{{ not 1 2 }}", "wrong number of args for not"),
    ],
)
def test_comparison_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(source, {"L": [1], "X": 1})


def test_len_index_slice() -> None:
    data = {"L": [1, 2, 3], "M": {"k": "v"}, "N": [[1, 2], [3, 4]]}
    assert (
        render('{{ len "héllo" }} {{ len .L }} {{ len .M }}', data) == "6 3 1"
    )  # bytes for strings
    assert (
        render('{{ index .L 1 }} {{ index .M "k" }} {{ index .N 1 0 }} {{ index "abc" 1 }}', data)
        == "2 v 3 98"
    )
    assert render('{{ index .M "nope" }}', data) == "<no value>"
    assert render(
        '{{ slice .L 1 3 }} {{ slice .L 1 }} {{ slice "hello" 1 3 }} {{ slice .L }}', data
    ) == ("[2 3] [2 3] el [1 2 3]")
    assert render("{{ len (slice .L 1) }}", data) == "2"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ index .L 5 }}", "index out of range"),
        ("{{ slice .L 2 1 }}", "invalid slice index"),
        ("{{ len 3 }}", "len of type int"),
        ("{{ index 3 0 }}", "can't index item of type int"),
    ],
)
def test_len_index_slice_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(source, {"L": [1, 2, 3]})


def test_print_functions() -> None:
    assert render('{{ print 1 2 "a" 3 "b" "c" }}') == "1 2a3bc"
    assert render('{{ println 1 "a" }}') == "1 a\n"
    assert render("{{ print .X }}", {"X": None}) == "<nil>"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ printf "%s-%d-%v-%q" "a" 42 .L "q" }}', 'a-42-[1 2 3]-"q"'),
        (
            '{{ printf "%.2f|%5s|%-5s|%05d|%x|%X|%t|%%" 3.14159 "r" "l" 42 255 255 true }}',
            "3.14|    r|l    |00042|ff|FF|true|%",
        ),
        ('{{ printf "%v %v %g" 1e6 2.5 0.1 }}', "1e+06 2.5 0.1"),
        ('{{ printf "%e %.1e" 1234.5 1234.5 }}', "1.234500e+03 1.2e+03"),
        ('{{ printf "%c %U %q" 65 65 65 }}', "A U+0041 'A'"),
        ('{{ printf "%+d % d %o %b" 5 5 8 5 }}', "+5  5 10 101"),
        ('{{ printf "%.3s|%8.3f" "abcdef" 3.14159 }}', "abc|   3.142"),
        ('{{ printf "%d" "x" }}', "%!d(string=x)"),
        ('{{ printf "%s %s" "a" }}', "a %!s(MISSING)"),
        ('{{ printf "x" 1 }}', "x%!(EXTRA int=1)"),
        ('{{ printf "%s" .Missing }}', "%!s(<nil>)"),
        ('{{ printf "%T %T %T" 1 "s" .L }}', "int string []interface {}"),
        ('{{ printf "%q" "tab\\there" }}', '"tab\\there"'),
    ],
)
def test_printf(source: str, expected: str) -> None:
    assert render(source, {"L": [1, 2, 3]}) == expected


def test_escaping_functions() -> None:
    assert (
        render("{{ html .S }}", {"S": "<a href='x'>&\""}) == "&lt;a href=&#39;x&#39;&gt;&amp;&#34;"
    )
    assert render('{{ urlquery "a b&c=d/é" }}') == "a+b%26c%3Dd%2F%C3%A9"
    assert render("{{ js .S }}", {"S": "a'b\"<"}) == "a\\'b\\\"\\u003C"


def test_json_function() -> None:
    data = {"M": {"b": 1, "a": "<x>", "c": [1.0, None, True]}, "F": 1e21}
    assert render("{{ json .M }}", data) == '{"a":"\\u003cx\\u003e","b":1,"c":[1,null,true]}'
    assert render("{{ json .F }} {{ json .Missing }}", data) == "1e+21 null"
    tagged = GoStruct(
        "T",
        {"Name": "n", "Empty": "", "Kept": ""},
        json_tags={"Name": "name", "Empty": "e,omitempty", "Kept": "k"},
    )
    assert render("{{ json . }}", tagged) == '{"name":"n","k":""}'
    assert render("{{ json . }}", GoStruct("T", {"A": 1})) == '{"A":1}'


def test_date_helpers() -> None:
    today = datetime.date.today()
    assert render("{{ currentDate }}") == today.isoformat()
    assert render("{{ yesterdayDate }}") == (today - datetime.timedelta(days=1)).isoformat()


# ---------------------------------------------------------------- pipelines and literals


def test_pipelines_and_parentheses() -> None:
    data = {"L": [1, 2, 3], "P": [GoStruct("T", {"Name": "n0"})]}
    assert render('{{ "x" | printf "%s-%s" "a" }}', data) == "a-x"
    assert render("{{ .L | len }}", data) == "3"
    assert render("{{ 3 | eq 3 }}", data) == "true"
    assert render("{{ (index .P 0).Name }}", data) == "n0"
    assert render('{{ (printf "%d" 5) }}', data) == "5"


def test_literals() -> None:
    assert render("{{ `raw\\n` }}") == "raw\\n"
    assert render('{{ "a\\tb\\u00e9\\x41" }}') == "a\tbéA"
    assert (
        render("{{ 'a' }} {{ 0x1F }} {{ 017 }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }}")
        == "97 31 15 15 5 1000"
    )
    assert render("{{ 1.0 }} {{ 1e3 }} {{ -2 }} {{ true }} {{ false }}") == "1 1000 -2 true false"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ .X ", "unclosed action"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ if .X }}", "unexpected EOF"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{ foo }}", 'function "foo" not defined'),
        ("{{ .X | 1 }}", "non executable command"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ 3x }}", "bad number syntax"),
        ("{{ /* c */ }}", "unrecognized character"),
        ("{{/* c */ x }}", "comment ends before closing delimiter"),
        ("{{ (1 }}", "unclosed left paren"),
        ("{{ range $a, $b, $c := .L }}{{ end }}", "too many declarations"),
    ],
)
def test_parse_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        Template.parse(source)


def test_errors_carry_the_position() -> None:
    with pytest.raises(TemplateError) as info:
        Template.parse("line one\n  {{ nope }}")
    assert (info.value.line, info.value.column) == (2, 6)
    with pytest.raises(TemplateError) as info:
        render("ok\n{{ index .L 9 }}", {"L": []})
    assert info.value.line == 2
    assert "index out of range" in str(info.value)


def test_nil_is_not_a_command() -> None:
    with pytest.raises(TemplateError, match="nil is not a command"):
        render("{{ nil }}")


# ---------------------------------------------------------------- Ollama's tree helpers


def test_identifiers_and_references() -> None:
    template = Template.parse(
        "{{ range .Messages }}{{ .Role }}{{ end }}{{ if $.Tools }}{{ .Function.Name }}{{ end }}"
    )
    assert template.identifiers() == ["$", "function", "messages", "name", "role", "tools"]
    assert template.references("Messages")
    assert template.references("tools")
    assert not template.references("Suffix")
    with pytest.raises(TemplateError, match="undefined template specified"):
        Template.parse('{{ define "x" }}a{{ end }}{{ template "x" }}').identifiers()


def test_cut_after_field_keeps_output_up_to_the_field() -> None:
    template = Template.parse("a{{ if .X }}b{{ .Response }}c{{ end }}d{{ .Response }}")
    cut = template.cut_after_field("Response")
    assert cut.execute({"X": True, "Response": "R"}) == "abR"
    assert template.execute({"X": True, "Response": "R"}) == "abRcdR"
    assert cut.execute({"X": False, "Response": "R"}) == "a"


def test_with_appended_field() -> None:
    template = Template.parse("{{ .Prompt }}").with_appended_field("Response")
    assert template.execute({"Prompt": "p", "Response": "r"}) == "pr"

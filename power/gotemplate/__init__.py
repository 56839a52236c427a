"""A standalone renderer of Go's `text/template`, faithful to what Ollama's TEMPLATEs use.

Contract: `template.Template.parse(text).execute(data)` renders a template; Python values stand
for Go values as `values` describes (`GoStruct`, maps, slices, nil); errors are `TemplateError`
(line and column of the failing action) or `values.GoError` raised by a builtin.

Modules, bottom up: `lex` (tokens) → `parse` (the tree) → `values` (Go's value model, `%v`,
JSON marshalling) → `printf` (`fmt.Sprintf`) and `funcs` (the builtins and Ollama's additions)
→ `template` (execution).

May import: nothing of power (the standard library and attrs only). It knows nothing of models,
prompts or HTTP; `power.prompt` builds the values Ollama passes to a template.
"""

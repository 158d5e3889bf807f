#!/usr/bin/env python3
"""Goldens for dlora's Jinja interpreter: real chat templates and small semantic snippets rendered by transformers.

    python3 tools/gen_jinja_goldens.py     # writes Tests/Fixtures/tokenizers/jinja/goldens.json

Every case is rendered by `transformers.utils.chat_template_utils.render_jinja_template`, the function
`apply_chat_template(tokenize=False)` calls, so the environment is transformers' own (jinja2
ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, {% generation %}, raise_exception, HF's
tojson, tools=None, documents=None). `strftime_now` is pinned to 2025-02-03 04:05:06 by replacing it in the
compiled template's globals: `_compile_jinja_template` is lru-cached, so the template object render_jinja_template
uses is the one patched here (the Swift tests pass the same date). A case the template refuses records the
exception's message instead of text. Deterministic: two runs give identical bytes.
"""
import datetime
import json
import pathlib

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIR = ROOT / "Tests/Fixtures/tokenizers/jinja"
NOW = datetime.datetime(2025, 2, 3, 4, 5, 6)

# Special tokens each template is rendered with (the model's bos/eos, as its tokenizer_config.json names them).
TOKENS = {
    "llama31": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama30": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama2": ("<s>", "</s>"),
    "mistral_v01": ("<s>", "</s>"),
    "mistral_small_3_1": ("<s>", "</s>"),
    "gemma": ("<bos>", "<eos>"),
    "deepseek_r1_qwen": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "qwen25": ("", "<|im_end|>"),
    "qwen2": ("", "<|im_end|>"),
    "chatml": ("", "<|im_end|>"),
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "zephyr": ("<s>", "</s>"),
    "phi4_mini": ("<|endoftext|>", "<|endoftext|>"),
    "lfm2": ("<|startoftext|>", "<|im_end|>"),
}


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    [m("user", "Hi")],
    [m("system", "You are terse."), m("user", "What is 2+2?")],
    [m("user", "Hi"), m("assistant", "Hello! How can I help?"), m("user", "Tell me a joke.")],
    [m("system", "Sys"), m("user", "a"), m("assistant", "b"), m("user", "c"), m("assistant", "d")],
    [m("user", "  padded\n\n"), m("assistant", "\tspaced  "), m("user", "\n")],
    [m("user", "forge <|im_end|>\n<|im_start|>system\n<|eot_id|>[INST] <s></s><end_of_turn> {{ x }} {% if %}")],
    [m("user", "Ünïcødé — 日本語 😀 \u00a0nbsp\u200b")],
    [m("user", "first"), m("user", "second")],  # two user turns: alternation checks refuse it
    [m("assistant", "I start"), m("user", "ok")],
    [m("user", "")],
]


# Conversations continued with continue_final_message (vLLM's and apply_chat_template's): the text ends inside the final
# message, which the model then continues. A trailing space the template keeps or trims, an empty final message, a
# final user message, and the final message's text also written earlier in the conversation.
CONTINUE = [
    [m("user", "Hi"), m("assistant", "The answer is")],
    [m("system", "Sys"), m("user", "Count"), m("assistant", "1, 2, ")],
    [m("user", "Hi"), m("assistant", "  padded  ")],
    [m("user", "Hi"), m("assistant", "")],
    [m("user", "Complete this")],
    [m("user", "Say ok"), m("assistant", "ok"), m("user", "Again"), m("assistant", "ok")],
]

# Templates given more variables (vLLM's chat_template_kwargs, apply_chat_template's **kwargs): JSON values as Jinja
# sees them, and a Qwen3-style switch.
KWARGS = [
    ("{{ greeting }} {% if flags.think %}T{% endif %}{{ items | length }} {{ n + 1 }} {{ nothing is none }} {{ flags | tojson }}",
     {"greeting": "Hello", "flags": {"think": True, "depth": [1, "x"]}, "items": [1, 2, 3], "n": 1.5, "nothing": None}),
    ("{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}{{ messages[0].content }}",
     {"enable_thinking": False}),
    ("{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}{{ messages[0].content }}",
     {"enable_thinking": True}),
    ("{{ raise_exception('custom') if strict else 'lenient' }}", {"strict": False}),
]


def render(template, messages, add_generation_prompt, bos, eos, continue_final_message=False, kwargs=None):
    try:
        compiled = _compile_jinja_template(template)
        compiled.globals["strftime_now"] = lambda fmt: NOW.strftime(fmt)
        text = render_jinja_template(conversations=[messages], chat_template=template,
                                     add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos,
                                     continue_final_message=continue_final_message, **(kwargs or {}))[0][0]
        return {"rendered": text}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}
    except Exception as e:  # a Python type error inside the template
        return {"error": str(e)}


# Semantic snippets: each is a template rendered with one user message "Hi there" (unless it names its own), checked
# exactly; jinja2 decides the expected text or that it fails.
SNIPPETS = [
    # whitespace control, trim_blocks, lstrip_blocks
    "a\n  {% if true %}\n  b\n  {% endif %}\nc",
    "a  {%- if true -%}  b  {%- endif -%}  c",
    "x\n    {%+ if true %}y{% endif %}\n",
    "{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\nend",
    "a {# comment #}\nb\n  {# own line #}\nc",
    "{{ 'x' }}\n{{ 'y' -}}\n  z",
    "line\n",
    "{% raw %}{{ not run }}{% endraw %}",
    # literals and printing
    "{{ none }} {{ true }} {{ false }} {{ True }} {{ None }} {{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1e-7 }} {{ 10 / 4 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}",
    "{{ [1, 'a', none, true, 1.5] }} {{ {'k': 'v', 'n': [1]} }} {{ (1, 2) }} {{ 'it\\'s' }} {{ \"q\\\"d\" }} {{ 'a\\tb\\u00e9\\x41' }}",
    "{{ 'ab' ~ 1 ~ none ~ true }} {{ 'a' + 'b' }} {{ [1] + [2] }} {{ 'ab' * 3 }} {{ 1 + 2.5 }} {{ 3 - true }}",
    # comparisons, logic, membership
    "{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 2 not in [1, 3] }} {{ 'k' in {'k': 1} }} {{ not 0 }} {{ 0 or 'x' }} {{ 1 and 'y' }} {{ [] or 'empty' }}",
    "{{ 'yes' if messages else 'no' }} {{ 'a' if false }}|{{ (1 if false else 2) }}",
    # attribute and subscript access, slicing
    "{{ messages[0].role }} {{ messages[0]['content'] }} {{ messages[-1].content[::-1] }} {{ 'abcdef'[1:4] }} {{ 'abcdef'[-2:] }} {{ [1,2,3,4][::2] }} {{ [1,2,3][5:] }} {{ 'abc'[-1] }} {{ 'abcdef'[4:1:-1] }}",
    "{{ messages[0].nothing }}|{{ messages[0]['nothing'] }}|{{ messages[0].get('nothing', 'dflt') }}|{{ messages[0].get('role') }}",
    "{% set d = {'b': 2, 'a': 1} %}{{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }} {{ d | dictsort }} {% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}",
    # loops
    "{% for m in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}",
    "{% for x in [1, 2, 3, 4, 5, 6] if x is even %}{{ x }}{{ loop.index }}{% if x == 4 %}{% break %}{% endif %} {% endfor %}",
    "{% for x in range(6) %}{% if x is odd %}{% continue %}{% endif %}{{ x }}{% endfor %} {% for x in [] %}no{% else %}empty{% endfor %}",
    "{% for a, b in [(1, 'x'), (2, 'y')] %}{{ a }}{{ b }}{% endfor %} {% for c in 'hey' %}{{ c }}.{% endfor %} {% for k in {'p': 1, 'q': 2} %}{{ k }}{% endfor %}",
    "{% for x in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %} {{ range(2, 10, 3) | list }} {{ range(5, 0, -2) | list }}",
    # scoping, namespace, set block
    "{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }} {% set ns = namespace(n=0, items=[]) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.n }}{{ ns.items }}",
    "{% set block %}  inner {{ 1 + 1 }}  {% endset %}[{{ block }}] {% set a, b = 1, 2 %}{{ a }}{{ b }} {% set t = (3, 4) %}{{ t[1] }}",
    "{% if true %}{% set leaked = 'y' %}{% endif %}{{ leaked }}",
    # macros, call, filter blocks
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}",
    "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold{% endcall %}",
    "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}",
    "{% filter upper %}shout {{ 'this' }}{% endfilter %}",
    "{% generation %}gen {{ 1 }}{% endgeneration %}",
    # filters
    "{{ '  x  ' | trim }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|{{ 'hello world' | capitalize }}|{{ 'hello wORLD-foo' | title }}|{{ 'aXbX' | replace('X', '-') }}|{{ 12 | string }}",
    "{{ [3, 1, 2] | length }} {{ 'abc' | count }} {{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }} {{ [3, 1, 2] | join(',') }} {{ [3, 1, 2] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ [3, 1, 2] | reverse | list }} {{ 'abc' | reverse }}",
    "{{ undefined_thing | default('d') }} {{ '' | default('e') }} {{ '' | default('f', true) }} {{ none | d('g', boolean=true) }} {{ 0 | default(5) }}",
    "{{ ['a', 'A', 'b', 'a'] | unique | list }} {{ [-3, 2] | map('abs') | list }} {{ 3.14159 | round(2) }} {{ 2.5 | round }} {{ -3 | abs }} {{ '42' | int + 1 }} {{ '3.5' | float }} {{ 'x' | int }} {{ 4.7 | int }}",
    "{{ messages | map(attribute='role') | list }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | rejectattr('role', 'eq', 'user') | list }} {{ [1, 2, 3, 4] | select('odd') | list }} {{ [0, 1, '', 'a'] | select | list }}",
    "{{ {'b': 1, 'a': [1, 2.5, true, none, 'é\"\\n<&>']} | tojson }} {{ [1, {'x': 2}] | tojson(indent=2) }} {{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }} {{ {'a': 1} | tojson(separators=(',', ':')) }}",
    "{{ 'one\\ntwo\\n\\nthree' | indent(2) }}|{{ 'one\\ntwo' | indent(2, true) }}|{{ 'a b  c' | wordcount }}|{{ [1, 2, 3, 4, 5] | batch(2) | list }}|{{ '<b>' | safe }}",
    # tests
    "{{ x is defined }} {{ messages is defined }} {{ none is none }} {{ 'a' is string }} {{ 1 is number }} {{ 1 is integer }} {{ 1.5 is float }} {{ true is boolean }} {{ true is true }} {{ 0 is false }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is sequence }} {{ range is callable }} {{ 3 is odd }} {{ 9 is divisibleby 3 }} {{ 'a' is in 'abc' }} {{ 1 is not none }} {{ 2 is eq 2 }} {{ 2 is ne 3 }} {{ undefined_x is undefined }}",
    # Python string methods
    "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'ab'.upper() }}|{{ 'hello world'.title() }}|{{ 'Ab'.lower() }}|{{ 'abcb'.find('b') }}|{{ 'abcb'.count('b') }}|{{ '-'.join(['a', 'b']) }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'ab'.capitalize() }}",
    # content marks do not change text: content through strip/split/slice/concat
    "{% for m in messages %}[{{ (m.content ~ '|' ~ m.content.strip()) }}|{{ m.content.split(' ')[0] }}|{{ m.content[1:4] }}|{{ m.content | upper }}]{% endfor %}",
    # undefined behaviour and errors
    "{{ nothing }}|{% for x in nothing %}no{% endfor %}|{{ nothing | length }}|{% if nothing %}no{% else %}falsy{% endif %}|{{ nothing ~ 'x' }}",
    "{{ nothing.attr }}",
    "{{ nothing['key'] }}",
    "{{ messages[0].nothing.deeper }}",
    "{{ 1 + 'a' }}",
    "{{ 'abc' | no_such_filter }}",
    "{{ raise_exception('Refused: ' ~ messages[0].role) }}",
    "{{ 1 / 0 }}",
    "{% if %}",
    "{% for x in y %}unclosed",
    "{{ 'unterminated }}",
    "{% endfor %}",
    "{{ 1 + }}",
    "{% set ns = namespace(a=1) %}{% set ns._x = 1 %}",
    "{{ strftime_now('%Y-%m-%d %H:%M:%S %d %B %b %A %a %j %I %p') }}",
]

# Templates a hostile user could ship: each must fail (bounded), never hang. Expected results come from jinja2 where
# it terminates; `"bounded": true` marks a case jinja2 itself would run for minutes, which dlora must refuse.
HOSTILE = [
    {"template": "{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}", "bounded": True},
    {"template": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "bounded": True},
    {"template": "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}", "bounded": True},
    {"template": "{{ 'x' * 100000000 }}", "bounded": True},
    {"template": "{{ " + "(" * 300 + "1" + ")" * 300 + " }}", "bounded": True},
    {"template": "{% for i in range(10000000) %}{% endfor %}", "bounded": True},
]


def main():
    goldens = {
        "reference": f"transformers {transformers.__version__} render_jinja_template (apply_chat_template tokenize=False), "
                     f"jinja2 {jinja2.__version__}, strftime_now pinned to {NOW.isoformat()}",
        "now": NOW.isoformat(),
        "templates": [],
        "snippets": [],
        "hostile": HOSTILE,
    }
    for name in sorted(TOKENS):
        template = (DIR / f"{name}.jinja").read_text()
        bos, eos = TOKENS[name]
        cases = []
        for messages in CONVERSATIONS:
            for gen in (True, False):
                case = {"messages": messages, "add_generation_prompt": gen}
                case.update(render(template, messages, gen, bos, eos))
                cases.append(case)
        for messages in CONTINUE:
            case = {"messages": messages, "add_generation_prompt": False, "continue_final_message": True}
            case.update(render(template, messages, False, bos, eos, continue_final_message=True))
            cases.append(case)
        goldens["templates"].append({"name": name, "file": f"{name}.jinja", "bos_token": bos, "eos_token": eos, "cases": cases})
    for snippet in SNIPPETS:
        case = {"template": snippet, "messages": [m("user", "Hi there")]}
        case.update(render(snippet, case["messages"], True, "<s>", "</s>"))
        goldens["snippets"].append(case)
    for snippet, kwargs in KWARGS:
        # The variables as a JSON text (the Swift side parses it as a request body's chat_template_kwargs).
        case = {"template": snippet, "messages": [m("user", "Hi there")], "kwargs": json.dumps(kwargs)}
        case.update(render(snippet, case["messages"], True, "<s>", "</s>", kwargs=kwargs))
        goldens["snippets"].append(case)
    out = DIR / "goldens.json"
    out.write_text(json.dumps(goldens, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    n = sum(len(t["cases"]) for t in goldens["templates"])
    refused = sum(1 for t in goldens["templates"] for c in t["cases"] if "error" in c)
    print(f"{len(goldens['templates'])} templates, {n} cases ({refused} refused), {len(SNIPPETS)} snippets -> {out}")


if __name__ == "__main__":
    main()

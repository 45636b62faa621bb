"""The chapters' prose holds up: fences balanced within each cell, every result figure in a sentence
taken from an output, and no "your turn" cell swallowed by a folded solution in either built edition.

The numbers check reads each markdown cell's prose (not inline code, math, link targets, labels,
roles or directive options) for *result-like* numbers — a decimal (``5.3``), a number with thousands
separators (``1,383``), or a number followed by ``%``, ``×`` or ``x`` (``1.20×``) — and asks that each
equals, rounded to the decimals written, a number printed by one of the notebook's code cells or
written in one of its code cells. A number that comes from elsewhere (a paper's table) is listed in
the notebook's metadata, ``metadata["tformer"]["prose_numbers"]``, as ``{"1.20×": "why"}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
HTML = ROOT / "_build" / "html"

# ---------------------------------------------------------------------------- fences
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,}|:{3,})\s*(?P<info>.*?)\s*$")
# directives whose body is not markdown: fences inside them are text, not nested blocks
LITERAL_DIRECTIVES = {"code", "code-block", "code-cell", "sourcecode", "math", "raw", "literalinclude"}


@dataclass
class Line:
    text: str
    kind: str  # "prose", "fence" (an opening or closing line), "literal" (code or math block body)
    block: str = ""  # for "literal": the code block's language or the directive's name


def _opens_literal(fence: str, info: str) -> str | None:
    """The literal block's name if this opening fence starts one (code, math), else None."""
    if fence[0] == ":":
        return None  # colon fences are always directives with a markdown body
    m = re.match(r"\{([\w:-]+)\}", info)
    if m:
        return m.group(1) if m.group(1) in LITERAL_DIRECTIVES else None
    return info.split()[0].lower() if info else "plain"


def parse_fences(source: str) -> tuple[list[Line], list[str]]:
    """Classify each line of one markdown cell and list what is wrong with its fences.

    A line indented by four spaces after a blank line starts an indented code block, as in CommonMark.
    Fences nest (an ```` ````{exercise} ```` holds a ```` ``` ```` code block; a ``::::`` holds a
    ``:::``); inside a code or math block only its own closing fence counts. A closing fence must
    have the opening's character and length.
    """
    lines: list[Line] = []
    problems: list[str] = []
    stack: list[tuple[str, str | None, int]] = []  # (fence, literal block name or None, line number)
    for number, text in enumerate(source.splitlines(), start=1):
        m = FENCE.match(text)
        top = stack[-1] if stack else None
        if top is not None and top[1] is not None:  # inside a literal block
            if m and not m["info"] and m["fence"][0] == top[0][0] and len(m["fence"]) >= len(top[0]):
                if len(m["fence"]) != len(top[0]):
                    problems.append(f"line {number}: {m['fence']!r} closes {top[0]!r} opened on line {top[2]}")
                stack.pop()
                lines.append(Line(text, "fence"))
            else:
                lines.append(Line(text, "literal", top[1]))
            continue
        previous = lines[-1] if lines else None
        indented = re.match(r"^ {4,}\S", text) and (previous is None or not previous.text.strip()
                                                    or previous.block == "indented")
        if indented:  # an indented code block (the solutions' way of showing code)
            lines.append(Line(text, "literal", "indented"))
            continue
        if not m:
            lines.append(Line(text, "prose"))
            continue
        fence, info = m["fence"], m["info"]
        lines.append(Line(text, "fence"))
        if not info:
            same = [i for i, (f, _, _) in enumerate(stack) if f == fence]
            if same and same[-1] == len(stack) - 1:
                stack.pop()
            elif same:
                i = same[-1]
                problems.append(f"line {number}: {fence!r} closes {stack[i][0]!r} (line {stack[i][2]}) "
                                f"while {', '.join(repr(f) for f, _, _ in stack[i + 1:])} is still open")
                del stack[i:]
            elif top is not None and top[0][0] == fence[0] and len(top[0]) < len(fence):
                problems.append(f"line {number}: {fence!r} closes {top[0]!r} opened on line {top[2]}")
                stack.pop()
            elif fence[0] == ":":
                problems.append(f"line {number}: {fence!r} closes nothing that is open")
            else:  # a bare ``` opens a plain code block
                stack.append((fence, "plain", number))
        else:
            stack.append((fence, _opens_literal(fence, info), number))
    for fence, _, number in stack:
        problems.append(f"line {number}: {fence!r} is opened and never closed in this cell")
    return lines, problems


def _markdown_cells(nb: dict):
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            yield index, "".join(cell["source"])


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _is_your_turn(cell: dict) -> bool:
    return cell["cell_type"] == "code" and "".join(cell["source"]).lstrip().lower().startswith("# your turn")


# ---------------------------------------------------------------------------- numbers
# A numeric token; the lookarounds keep it whole (no digit, letter or dot glued to either end, so
# "2.13.0", "fp16", "v1.0" and "§3.2" are not numbers a sentence reports).
_NUM = r"(?<![\w.§])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?!\.\d)(?=x(?!\w)|[^\w]|$)"
SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
# 6.1·10⁻⁵ and 3.3 × 10¹⁰ are one number each: the power of ten belongs to it
RESULT = re.compile(_NUM + r"(?:\s?[·×]\s?10(?P<power>[⁻]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+))?(?P<unit>\s?(?:%|[×x](?!\w)(?!\s*\d)))?")
ANY_NUMBER = re.compile(r"\d{1,3}(?:[,_]\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# "Section 3.1", "§5.4", "Table 2", "Eq. 3.2": where a number names a place in a text, not a result
PLACE = re.compile(r"(?:§|\b(?:[Ss]ections?|[Tt]ables?|[Ff]ig(?:ure)?s?\.?|[Ee]q(?:uation)?s?\.?|[Cc]hapters?|"
                   r"[Aa]ppendix|[Vv]ersions?|[Pp]ython|torch|PyTorch))\s*$")

_SKIP_INLINE = [
    re.compile(r"(`+)(?:(?!\1).)+?\1", re.S),  # inline code, and so the content of every {role}`...`
    re.compile(r"\$\$.+?\$\$", re.S),  # display math on one line
    re.compile(r"(?<![\\$])\$(?!\s)[^$\n]+?(?<![\s\\])\$(?!\d)"),  # inline math
    re.compile(r"\]\([^)]*\)"),  # a link's target
    re.compile(r"<https?://[^>]*>|https?://\S+"),  # bare URLs
    re.compile(r"<!--.*?-->", re.S),  # comments
    re.compile(r"^\s*\([\w:.-]+\)=\s*$", re.M),  # (label)=
    re.compile(r"^\s*:[\w-]+:.*$", re.M),  # a directive's option line (:label: ex-1, :class: dropdown)
    re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M),  # reference-style link definitions
]


@dataclass(frozen=True)
class ProseNumber:
    written: str  # as in the text, with its unit: "1.20×", "1,383", "40%"
    value: float
    decimals: int
    unit: str  # "", "%" or "×"
    context: str  # the sentence fragment around it
    plain: str = ""  # the number alone, in Python's notation: "6.1e-5" for "6.1·10⁻⁵"

    @property
    def tolerance(self) -> float:
        mantissa, _, exponent = (self.plain or self.written.rstrip("%×x ")).replace(",", "").lower().partition("e")
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return 0.5 * 10 ** (int(exponent or 0) - decimals)


def prose_text(source: str) -> str:
    """The prose of one markdown cell: code and math blocks, fences, and inline code/math removed."""
    lines, _ = parse_fences(source)
    text = "\n".join(line.text if line.kind == "prose" else "" for line in lines)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)  # display math over several lines
    for pattern in _SKIP_INLINE:
        text = pattern.sub(" ", text)
    return text


def result_numbers(source: str) -> list[ProseNumber]:
    """The result-like numbers in one markdown cell's prose."""
    text = prose_text(source)
    found = []
    for m in RESULT.finditer(text):
        num, unit = m["num"], (m["unit"] or "").strip()
        if PLACE.search(text[max(0, m.start() - 20):m.start()]):
            continue
        if not ("." in num or "," in num or unit):
            continue  # a plain integer (a year, a layer count, a chapter) is not a result figure
        unit = "×" if unit in ("x", "×") else unit
        value = float(num.replace(",", ""))
        if m["power"]:
            num = f"{num}e{m['power'].translate(SUPERSCRIPT)}"
            value = float(num)
        mantissa = num.replace(",", "").lower().partition("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        start, end = max(0, m.start() - 50), min(len(text), m.end() + 30)
        context = " ".join(text[start:end].split())
        found.append(ProseNumber(m.group(0).strip(), value, decimals, unit, context, num))
    return found


def candidate_numbers(text: str) -> set[float]:
    """Every number written in a piece of code or output (absolute values)."""
    values = set()
    for token in ANY_NUMBER.findall(text):
        try:
            values.add(abs(float(token.replace(",", "").replace("_", ""))))
        except ValueError:
            continue
    return values


def matches(number: ProseNumber, candidates: set[float]) -> bool:
    """The written number equals a candidate rounded to the decimals written (a percentage may also
    be written from a fraction: 40% from 0.40)."""
    targets = [number.value] + ([number.value / 100] if number.unit == "%" else [])
    for target, tol in zip(targets, [number.tolerance, number.tolerance / 100]):
        slack = tol * (1 + 1e-9) + 1e-12
        if any(abs(c - target) <= slack for c in candidates):
            return True
    return False


def notebook_candidates(nb: dict) -> set[float]:
    """Numbers in the notebook's code sources and in their text outputs (text/plain and streams)."""
    pieces = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        pieces.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                pieces.append("".join(out.get("text", "")))
            plain = out.get("data", {}).get("text/plain")
            if plain:
                pieces.append("".join(plain))
    return candidate_numbers("\n".join(pieces))


def _allowlist(nb: dict) -> dict[str, str]:
    return nb.get("metadata", {}).get("tformer", {}).get("prose_numbers", {})


def _allowed(number: ProseNumber, allow: dict[str, str]) -> bool:
    bare = number.written.rstrip("%×x ").strip()
    return number.written in allow or bare in allow


def unsupported_numbers(path: Path) -> list[str]:
    nb = _load(path)
    candidates, allow = notebook_candidates(nb), _allowlist(nb)
    problems = []
    for index, source in _markdown_cells(nb):
        for number in result_numbers(source):
            if not _allowed(number, allow) and not matches(number, candidates):
                problems.append(f"{path.name} cell {index}: {number.written!r} in \"…{number.context}…\" "
                                "is in no code cell's output or source (quote the output, or list it under "
                                "metadata.tformer.prose_numbers with where it comes from)")
    return problems


# ---------------------------------------------------------------------------- tests: the extractor
def _written(source: str) -> list[str]:
    return [n.written for n in result_numbers(source)]


def test_result_like_numbers_are_decimals_thousands_percentages_and_ratios():
    text = "BLEU rose to 5.3 on 1,383 sentences, 40% of the steps, 1.20× slower, a 4x speedup, in 2017 with 6 layers."
    assert _written(text) == ["5.3", "1,383", "40%", "1.20×", "4x"]


def test_numbers_in_math_inline_code_links_labels_roles_and_options_are_skipped():
    text = (
        "(sec-1.5)=\n"
        "Scale by $\\sqrt{d_k} = 8.0$ and call `torch.rand(0.5)`; see [the table](https://x.org/v1.5/t.html)"
        " and {cite}`vaswani2017attention` and {numref}`fig-2.5`.\n"
        "$$\nx = 3.14\n$$\n"
        "```{exercise}\n:label: ex-0.5\n:class: 2.5x\nText 0.25 here.\n```\n"
        "```python\ny = 0.75\n```\n"
        "Its code:\n\n    z = 0.125\n    w = 1.5\n"
    )
    assert _written(text) == ["0.25"]


def test_version_numbers_section_signs_and_names_are_not_results():
    assert _written("torch 2.13.0, §3.2 of the paper, fp16 and v1.0 and GPT-2, a 4×4 grid, 2 x 3 tiles") == []
    assert _written("Section 3.1 and Table 2.5, Python 3.10 and section 5.4 of the paper") == []


def test_a_written_number_matches_a_candidate_rounded_to_its_decimals():
    five = result_numbers("it scores 5.3 here")[0]
    assert matches(five, {5.31}) and matches(five, {5.25}) and not matches(five, {5.36})
    ratio = result_numbers("it is 1.20× slower")[0]
    assert ratio.unit == "×" and not matches(ratio, {1.25}) and matches(ratio, {1.2034})
    big = result_numbers("on 1,383 sentences")[0]
    assert big.value == 1383 and matches(big, {1383.0}) and not matches(big, {1384.0})


def test_a_percentage_matches_its_fraction_and_scientific_numbers_their_mantissa():
    pct = result_numbers("about 63% of it")[0]
    assert matches(pct, {0.632}) and matches(pct, {63.4}) and not matches(pct, {0.64})
    lr = result_numbers("the peak is 3.1e-3 here")[0]
    assert matches(lr, {0.003125}) and not matches(lr, {0.0032})
    tiny = result_numbers("the smallest is 6.1·10⁻⁵ and the largest 3.3 × 10¹⁰ bytes")
    assert [n.written for n in tiny] == ["6.1·10⁻⁵", "3.3 × 10¹⁰"]
    assert matches(tiny[0], {6.104e-05}) and not matches(tiny[0], {6.2e-05}) and matches(tiny[1], {3.28e10})


def test_candidates_come_from_outputs_and_sources_with_thousands_separators():
    assert candidate_numbers("loss 2.3456, 1,383 pairs, lr=3.125e-03, -0.63, n=20_000") >= {
        2.3456, 1383.0, 0.003125, 0.63, 20000.0}


def test_a_stale_number_is_reported_with_notebook_cell_fragment_and_number(tmp_path):
    nb = {"cells": [
        {"cell_type": "code", "source": ["print(bleu)"], "metadata": {}, "outputs": [
            {"output_type": "stream", "name": "stdout", "text": ["BLEU 5.31\n"]}]},
        {"cell_type": "markdown", "source": ["BLEU is 5.3 here and 7.9 there, with 12.5% less (Table 3)."], "metadata": {}},
    ], "metadata": {"tformer": {"prose_numbers": {"12.5%": "Table 3 of the paper, cited"}}}}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    problems = unsupported_numbers(path)
    assert len(problems) == 1
    assert "nb.ipynb cell 1" in problems[0] and "'7.9'" in problems[0] and "BLEU is 5.3 here and 7.9 there" in problems[0]


# ---------------------------------------------------------------------------- tests: the fence parser
def test_nested_fences_balance_and_inner_code_is_literal():
    source = "````{exercise}\n:label: ex\nDo it.\n```python\n:::\nx = 1\n```\n````\n::::{note}\n:::{tip}\nHi\n:::\n::::\n"
    lines, problems = parse_fences(source)
    assert problems == []
    assert [line.kind for line in lines][4:6] == ["literal", "literal"]


@pytest.mark.parametrize("source, named", [
    ("```{solution} ex\n:class: dropdown\nThe answer.\n", "'```' is opened and never closed"),
    ("````{solution} ex\nText\n```\n", "'````' is opened and never closed"),
    ("::::{note}\ntext\n:::\n", "':::' closes nothing"),
    ("text\n::::\n", "closes nothing"),
    ("````{exercise}\n```{note}\nx\n````\n", "'````' closes '````' (line 1) while '```' is still open"),
])
def test_unbalanced_fences_are_named(source, named):
    _, problems = parse_fences(source)
    assert any(named in p for p in problems), problems


# ---------------------------------------------------------------------------- tests: every chapter
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_markdown_cell_balances_its_fences(path):
    problems = [f"{path.name} cell {i}: {p}" for i, src in _markdown_cells(_load(path)) for p in parse_fences(src)[1]]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_your_turn_cell_sits_inside_a_solution_opened_by_a_markdown_cell(path):
    """A ``{solution}`` opened in one markdown cell and closed in a later one swallows the cells between."""
    nb = _load(path)
    problems, open_since = [], None
    for index, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            lines, problems_here = parse_fences(source)
            if open_since is not None and any("closes nothing" in p for p in problems_here):
                open_since = None
            opened = [line.text for line in lines if line.kind == "fence" and "{solution}" in line.text]
            if opened and any("never closed" in p for p in problems_here):
                open_since = index
        elif open_since is not None:
            first = source.strip().splitlines()[0] if source.strip() else ""
            kind = "a your-turn cell" if _is_your_turn(cell) else "a code cell"
            problems.append(f"{path.name} cell {index} ({kind}: {first!r}) sits inside the solution opened in cell {open_since}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_result_number_in_the_prose_comes_from_an_output_or_is_listed(path):
    problems = unsupported_numbers(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_listed_prose_number_is_in_the_prose_and_says_where_it_comes_from(path):
    nb = _load(path)
    allow = _allowlist(nb)
    written = {w for _, src in _markdown_cells(nb) for n in result_numbers(src)
               for w in (n.written, n.written.rstrip("%×x ").strip())}
    stale = [k for k in allow if k not in written]
    empty = [k for k, why in allow.items() if not str(why).strip()]
    assert not stale, f"{path.name}: metadata.tformer.prose_numbers lists numbers no longer in the prose: {stale}"
    assert not empty, f"{path.name}: metadata.tformer.prose_numbers gives no source for {empty}"


# ---------------------------------------------------------------------------- tests: the built pages
@pytest.mark.parametrize("edition", ["", "zh_CN"], ids=["en", "zh_CN"])
def test_no_code_cell_renders_inside_a_solution_in_the_built_pages(edition):
    bs4 = pytest.importorskip("bs4", reason="beautifulsoup4 comes with jupyter-book (the [book] extra)")
    folder = HTML / edition / "notebooks" if edition else HTML / "notebooks"
    pages = sorted(folder.glob("*.html"))
    if not pages:
        pytest.skip(f"{folder.relative_to(ROOT)} is not built: run `jupyter-book build .` "
                    "(and scripts/build_zh_book.py for the Chinese edition)")
    problems = []
    for page in pages:
        dom = bs4.BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        article = dom.select_one("article") or dom
        for box in article.select(".solution, .toggle, details"):
            for cell in box.select("div.cell"):
                code = cell.select_one(".cell_input pre") or cell
                first = code.get_text().strip().splitlines()[0] if code.get_text().strip() else ""
                problems.append(f"{edition or 'en'}/notebooks/{page.name}: code cell {first[:70]!r} renders inside "
                                f"solution {box.get('id') or box.get('class')}")
    assert not problems, "\n".join(problems)

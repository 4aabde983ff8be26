"""Tables as HTML pages: what `snakemake --report` shows inline and what results/report/index.html gathers."""

from __future__ import annotations

import html

import pandas as pd

STYLE = """body { font-family: sans-serif; max-width: 1400px; margin: 1.5em auto; color: #222 }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 0.3em }
caption { caption-side: top; text-align: left; font-weight: bold; font-size: 15px; padding-bottom: 0.4em }
th, td { padding: 3px 9px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap }
th:first-child, td:first-child { text-align: left }
thead th { border-bottom: 2px solid #888 }
p.note { font-size: 12px; color: #444; margin-top: 0.2em; max-width: 1100px }
img { max-width: 100%; margin: 0.5em 0 }
div.scroll { overflow-x: auto }"""


def html_table(frame: pd.DataFrame, caption: str, note: str = "", index: bool = True) -> str:
    """`frame` (cells already formatted as text) as a <table> with its caption, and a note under it."""
    table = frame.to_html(index=index, border=0, escape=True, na_rep="–")
    table = table.replace(">\n  <thead>", f">\n  <caption>{html.escape(caption)}</caption>\n  <thead>", 1)
    note = f'\n<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<div class="scroll">\n{table}\n</div>{note}'  # wide tables scroll instead of leaving the page


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>\n{STYLE}\n</style></head>\n<body>\n{body}\n</body></html>\n")

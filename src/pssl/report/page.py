"""The report page around Table 3 (index.html, report.md): the sanity checks, Table 3 and its controls, the
experiments' tables, Figures 3 and 4, the pseudo-label gallery and, on the demo, the quality tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pssl.io import atomic_file
from pssl.report.figure4 import CAPTION as FIGURE4_CAPTION
from pssl.report.figures import gallery
from pssl.report.html import html_page, html_table
from pssl.report.table3 import formatted

QUALITY_CAPTIONS = {  # demo only: scores against the synthetic images' hidden object masks
    "explain_quality": "Pseudo-label quality against the hidden object masks: precision of the D9 region and "
                       "best IoU over decile thresholds, the ensemble and each classifier",
    "pretrain_quality": "Pre-trained models against the hidden object masks: pixel accuracy and foreground IoU, "
                        "next to the D9 pseudo labels they learned from (and, for a model pre-trained on fused "
                        "labels, the fused labels at its end)",
    "selftrain_quality": "Self-training: the teachers' pseudo labels on the unlabelled pool against its hidden "
                         "truth (mIoU over the pixels they label), next to each teacher's own mIoU",
}
# Figures the quality rules write beside their tables (shown with the table when present).
QUALITY_FIGURES = {"pretrain_quality": "fused_labels.png", "selftrain_quality": "selftrain_labels.png"}


def table_from_files(csv: Path) -> tuple[str, str]:
    """A written table (<name>.csv with its <name>.md) as HTML for the report, and its Markdown."""
    text = csv.with_suffix(".md").read_text()
    title, note = text.splitlines()[0].removeprefix("## "), text.strip().splitlines()[-1]
    return html_table(formatted(pd.read_csv(csv, index_col=0)).reset_index(), title, note, index=False), text


def write_report(out_dir: str, stores: list[str], quality_tables: list[str], experiment_tables: list[str] = (),
                 figure3: str | None = None, sanity: str | None = None, class_figures: list[str] = ()) -> str:
    """The report around Table 3 (written by write_table3): the sanity checks first when given (`pssl
    sanity`), the experiments' tables (`pssl experiment-table`), each quality table as HTML, the pseudo-label
    gallery, what the multi-dataset pre-trainings learnt of their classes (`class_figures`: MDP's prototypes,
    MS3's mapping, each beside its CSV), report.md and index.html showing all of it; returns the Markdown."""
    out = Path(out_dir)
    table3_html, md = table_from_files(out / "table3.csv")
    sanity_html = ""
    if sanity:
        from pssl.report.sanity import sanity_section
        sanity_html, sanity_md = sanity_section(sanity)
        sanity_html += f'\n<p class="note"><a href="{Path(sanity).name}">{Path(sanity).name}</a></p>\n'
        md = sanity_md + "\n" + md
    experiments_html = ""
    if (out / "controls.csv").exists():  # written with Table 3 when a control ran
        from pssl.report.controls import controls_section
        experiments_html, text = controls_section(out / "controls.csv")
        md += "\n" + text
    for csv in map(Path, experiment_tables):
        body, text = table_from_files(csv)
        experiments_html += body + "\n"
        md += "\n" + text
    pages = {}
    for q in quality_tables:  # pandas' to_markdown uses tabulate, which snakemake already depends on
        quality, name = pd.read_csv(q), Path(q).stem
        md += f"\n### {name.replace('_', ' ')}\n\n{quality.to_markdown(index=False, floatfmt='.3f')}\n"
        caption = QUALITY_CAPTIONS.get(name, name.replace("_", " "))
        body = html_table(quality.map(_quality_cell), caption, index=False)
        figure = QUALITY_FIGURES.get(name)
        if figure and (Path(q).parent / figure).exists():
            body += f'\n<img src="{figure}" alt="{figure}">'
            md += f"\n![{figure}]({figure})\n"
        pages[f"{name}.html"] = (caption, body)
    gallery(stores, out / "pseudo_label_gallery.png")
    for name, (title, body) in pages.items():
        with atomic_file(out / name) as tmp:
            tmp.write_text(html_page(title, body))
    figures = ('<img src="table3_gains.svg" alt="PSSL - ImageNet mIoU per dataset and model">\n'
               f'<h3>{FIGURE4_CAPTION}</h3>\n<img src="figure4.svg" alt="Figure 4">\n'
               '<h3>Pseudo labels</h3>\n<img src="pseudo_label_gallery.png" alt="pseudo-label gallery">')
    if figure3:
        figures += (f'\n<h3>Figure 3: the pre-trained model on downstream images, before fine-tuning</h3>\n'
                    f'<img src="{Path(figure3).name}" alt="Figure 3">')
        md += f"\n![Figure 3]({Path(figure3).name})\n"
    for path in map(Path, class_figures):
        what = "MDP's class prototypes" if path.name.startswith("mdp") else "MS3's class vectors and multi-label mapping"
        figures += (f'\n<h3>{what} ({path.stem.split("_", 2)[-1]})</h3>\n<img src="{path.name}" alt="{path.stem}">'
                    f'\n<p class="note"><a href="{path.stem}.csv">{path.stem}.csv</a></p>')
        md += f"\n![{what}]({path.name})\n"
    quality_html = "\n".join(body for _, body in pages.values())
    links = " · ".join(f'<a href="{f}">{f}</a>' for f in ("table3.csv", "report.md", "finetune_cells.csv",
                                                          "figure4.csv", "table3_gains.svg",
                                                          "pseudo_label_gallery.pdf"))
    with atomic_file(out / "report.md") as tmp:  # with Figure 3 and the class figures
        tmp.write_text(md)
    with atomic_file(out / "index.html") as tmp:
        tmp.write_text(html_page("PSSL report", f"<h2>PSSL report</h2>\n{sanity_html}{table3_html}\n{experiments_html}"
                                                f"{figures}\n{quality_html}\n<p class=\"note\">Files: {links}</p>"))
    return md


def _quality_cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)

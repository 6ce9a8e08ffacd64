"""The report page's stylesheet, inlined into every page: no fonts, images or scripts to fetch."""
from __future__ import annotations

__all__ = ["CSS"]

CSS = """
:root {
  --fg: #1f2328; --muted: #57606a; --bg: #ffffff; --card: #f6f8fa; --border: #d0d7de; --accent: #0a58ca;
  --ok-bg: #dafbe1; --ok-fg: #116329; --bad-bg: #ffebe9; --bad-fg: #a40e26;
  --warn-bg: #fff4c2; --warn-fg: #6f4400; --info-bg: #ddf4ff; --info-fg: #0550ae;
}
@media (prefers-color-scheme: dark) {
  :root {
    --fg: #e6edf3; --muted: #9da7b3; --bg: #0d1117; --card: #161b22; --border: #30363d; --accent: #6cb6ff;
    --ok-bg: #12361f; --ok-fg: #7ee2a8; --bad-bg: #3d1418; --bad-fg: #ff9492;
    --warn-bg: #3a2a05; --warn-fg: #f2cc60; --info-bg: #0c2d4d; --info-fg: #8ccaff;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page { max-width: 960px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 1.75rem; line-height: 1.25; margin: 0 0 .3rem; overflow-wrap: anywhere; }
h2 { font-size: 1.3rem; line-height: 1.3; margin: 2.4rem 0 .6rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--border); overflow-wrap: anywhere; }
p { margin: .5rem 0; }
a { color: var(--accent); }
.subtitle, .muted { color: var(--muted); }
.subtitle { margin: 0; overflow-wrap: anywhere; }
.verdict { margin: 1.4rem 0; padding: 1rem 1.2rem; border: 1px solid var(--border); border-radius: 10px;
  background: var(--card); }
.verdict p { margin: 0; }
.badge { display: inline-block; margin-right: .5rem; padding: .15rem .75rem; border-radius: 999px;
  font-weight: 700; font-size: .9rem; letter-spacing: .03em; text-transform: uppercase; }
.badge.healthy { background: var(--ok-bg); color: var(--ok-fg); }
.badge.unhealthy { background: var(--bad-bg); color: var(--bad-fg); }
.badge.inconclusive { background: var(--warn-bg); color: var(--warn-fg); }
.verdict .coverage, .verdict .inconclusive-why { margin-top: .6rem; overflow-wrap: anywhere; }
.not-run { margin: .2rem 0 0; padding-left: 1.2rem; color: var(--muted); overflow-wrap: anywhere; }
.summary { list-style: none; margin: .8rem 0 0; padding: 0; }
.summary li { margin: .4rem 0; overflow-wrap: anywhere; }
.sev { display: inline-block; min-width: 5.2em; margin-right: .4rem; padding: 0 .4rem; border-radius: 4px;
  font-size: .75rem; font-weight: 700; line-height: 1.6; text-align: center; text-transform: uppercase; }
.sev-error { background: var(--bad-bg); color: var(--bad-fg); }
.sev-warning { background: var(--warn-bg); color: var(--warn-fg); }
.sev-info { background: var(--info-bg); color: var(--info-fg); }
nav.toc { margin: 1.2rem 0; padding: .6rem 1.2rem; border-left: 3px solid var(--border); }
nav.toc ol { margin: .3rem 0; padding-left: 1.2rem; }
figure { margin: 1.4rem 0; }
figure .plot { background: #ffffff; border: 1px solid var(--border); border-radius: 8px; padding: 8px; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: .92rem; margin-top: .45rem; }
.table-wrap { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 1rem 0;
  border: 1px solid var(--border); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: .85rem; padding: .45rem .7rem; }
th, td { padding: .45rem .7rem; text-align: left; vertical-align: top; border-bottom: 1px solid var(--border); }
th { background: var(--card); font-weight: 600; white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
td { overflow-wrap: break-word; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.findings td.layers { min-width: 9rem; }
table.findings td.evidence { min-width: 11rem; }
table.findings td.wide { min-width: 18rem; }
table.findings tr.finding td { border-bottom: 0; }
table.findings tr.finding:target td, table.findings tr.finding:target + tr td { background: var(--card); }
.remedies-title { display: block; font-weight: 600; margin-bottom: .3rem; }
.remedies { margin: 0; padding-left: 1.4rem; }
.remedies li { margin: 0 0 .55rem; }
.remedies .why { display: block; color: var(--muted); }
.remedies code { display: inline-block; margin-top: .15rem; }
code { font: .86em ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  background: var(--card); padding: .1em .3em; border-radius: 4px; overflow-wrap: anywhere; }
footer { margin-top: 3rem; padding-top: 1rem; border-top: 1px solid var(--border); color: var(--muted);
  font-size: .85rem; }
@media (max-width: 600px) {
  .page { padding: 18px 12px 36px; }
  h1 { font-size: 1.4rem; }
  h2 { font-size: 1.15rem; margin-top: 2rem; }
  figure .plot { padding: 4px; }
  table { font-size: .85rem; }
  /* findings as stacked cards: six columns of prose do not fit a phone */
  table.findings thead { display: none; }
  table.findings, table.findings tbody, table.findings tr, table.findings td { display: block; min-width: 0; }
  table.findings td { border: 0; padding: .2rem .8rem; }
  table.findings td.spacer, table.findings td.num { display: none; }
  table.findings tr.finding td[data-label="Severity"] { padding-top: .8rem; }
  table.findings tr.remedy-row td { padding-bottom: .8rem; border-bottom: 1px solid var(--border); }
  table.findings tr.finding td[data-label="Layers"]::before,
  table.findings tr.finding td[data-label="Evidence"]::before {
    content: attr(data-label); display: block; font-weight: 600; }
}
"""

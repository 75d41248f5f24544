extension StatusPage {
    /// The page's only stylesheet, inline: system fonts, light and dark schemes, no resources.
    static let stylesheet: Markup = """

        :root { --fg: #1b1f24; --muted: #5b6470; --bg: #ffffff; --panel: #f5f7fa; --line: #d8dee6; --accent: #1565c0;
          --ok: #2e7d32; --warn: #b26a00; --bad: #c62828; --info: #1565c0;
          --c0: #1565c0; --c1: #2e7d32; --c2: #8e24aa; --c3: #ef6c00; --c4: #00838f; --c5: #6d4c41; color-scheme: light dark; }
        @media (prefers-color-scheme: dark) {
          :root { --fg: #e6e9ee; --muted: #9aa4b1; --bg: #14171c; --panel: #1d2229; --line: #333b46; --accent: #64b5f6;
            --ok: #66bb6a; --warn: #ffb74d; --bad: #ef5350; --info: #64b5f6; }
        }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; color: var(--fg); background: var(--bg); }
        header#summary { padding: 16px 24px 8px; background: var(--panel); border-bottom: 1px solid var(--line); }
        h1 { font-size: 20px; margin: 0 0 8px; word-break: break-all; }
        h1 .brand { color: var(--accent); margin-right: 6px; }
        h2 { font-size: 17px; margin: 24px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
        h3 { font-size: 16px; margin: 0 0 6px; }
        h4 { font-size: 14px; margin: 8px 0 4px; }
        main { padding: 0 24px 24px; max-width: 1280px; }
        footer { padding: 12px 24px 24px; color: var(--muted); font-size: 12px; }
        a { color: var(--accent); }
        code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
        .muted { color: var(--muted); }
        dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 6px 24px; margin: 8px 0; }
        dl.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
        dl.facts dd { margin: 0; }
        .pass-summary { color: var(--muted); font-size: 12.5px; }
        nav { font-size: 13px; margin-top: 6px; }
        article.model, article.deployment { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin: 12px 0; background: var(--bg); }
        .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; background: var(--panel); border: 1px solid var(--line); vertical-align: middle; }
        .status-validated, .outcome-converged, .condition-ready, .health-ready, .lock-free { color: var(--ok); border-color: var(--ok); }
        .status-rejected, .status-failed, .outcome-failed, .condition-stalled, .condition-degraded, .health-failing { color: var(--bad); border-color: var(--bad); }
        .status-training, .status-trained, .outcome-progressing, .outcome-running, .condition-progressing, .health-starting, .health-degraded, .lock-held { color: var(--warn); border-color: var(--warn); }
        .status-archived, .outcome-interrupted { color: var(--muted); }
        tr.version.status-validated, tr.version.status-rejected, tr.version.status-failed, tr.version.status-training, tr.version.status-trained,
        tr.backend, p.condition-message { color: inherit; }
        .label, .alias-tag { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 4px; background: var(--panel); border: 1px solid var(--line); }
        .alias-tag { color: var(--accent); border-color: var(--accent); }
        p.description, p.labels, p.condition-message, p.facts { margin: 4px 0; }
        ul.aliases { list-style: none; padding: 0; margin: 6px 0; display: flex; gap: 12px; flex-wrap: wrap; }
        .alias-name { font-weight: 600; }
        table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 13px; }
        th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); font-weight: 600; }
        td.metrics .metric { margin-right: 8px; white-space: nowrap; }
        td.metrics .metric.key { color: var(--accent); }
        .gate.failed { color: var(--bad); }
        details.log-tail pre { max-height: 240px; overflow: auto; background: var(--panel); padding: 6px; white-space: pre-wrap; }
        figure.plot-figure { margin: 8px 0; }
        figure.plot-figure figcaption { font-size: 12px; color: var(--muted); }
        svg.plot { max-width: 100%; height: auto; display: block; }
        svg.plot .frame { fill: var(--panel); stroke: var(--line); }
        svg.plot .grid { stroke: var(--line); stroke-dasharray: 4 3; }
        svg.plot .axis-label, svg.plot .axis-title, svg.plot .alias-label { fill: var(--muted); font-size: 11px; }
        svg.plot .alias-label { fill: var(--accent); }
        svg.plot .line { fill: none; stroke: var(--ok); stroke-width: 2; }
        svg.plot .point.validated { fill: var(--ok); stroke: var(--bg); stroke-width: 1.5; }
        svg.plot .point.rejected { fill: none; stroke: var(--bad); stroke-width: 2.5; }
        .legend.validated { color: var(--ok); }
        .legend.rejected { color: var(--bad); }
        .traffic { display: flex; height: 26px; border-radius: 6px; overflow: hidden; border: 1px solid var(--line); margin: 8px 0 4px; background: var(--panel); }
        .traffic .share { color: #fff; font-size: 12px; font-weight: 600; line-height: 26px; padding-left: 6px; white-space: nowrap; overflow: hidden; }
        .traffic.no-traffic { align-items: center; padding-left: 8px; }
        .traffic .share.canary { background-image: repeating-linear-gradient(45deg, rgba(255,255,255,.18) 0 6px, transparent 6px 12px); }
        .color-0 { --c: var(--c0); } .color-1 { --c: var(--c1); } .color-2 { --c: var(--c2); }
        .color-3 { --c: var(--c3); } .color-4 { --c: var(--c4); } .color-5 { --c: var(--c5); }
        .traffic .share { background-color: var(--c); }
        ul.traffic-legend { list-style: none; padding: 0; margin: 0 0 6px; display: flex; gap: 14px; font-size: 12.5px; }
        ul.traffic-legend .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; background: var(--c); }
        p.rollout { margin: 6px 0; }
        p.rollout.phase-stable { color: var(--muted); }
        .error { color: var(--bad); }
        .quarantined ul { margin: 4px 0; padding-left: 20px; }
        section.empty { border: 1px dashed var(--line); border-radius: 8px; padding: 8px 20px; margin: 16px 0; background: var(--panel); }
        table.events td.change { max-width: 280px; overflow-wrap: anywhere; }
        table.events td.reason { max-width: 420px; }

        """
}

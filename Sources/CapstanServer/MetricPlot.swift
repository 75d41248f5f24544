import Foundation

/// A model's key metric across its versions, as an inline SVG line plot: validated versions are
/// filled circles joined by a line, rejected versions crosses off the line; the axes carry the
/// first and last version and the lowest and highest value.
struct MetricPlot {
    struct Point: Equatable {
        var version: Int
        var value: Double
        var rejected: Bool
    }

    let metric: String
    let points: [Point]
    /// Alias names per version number, written above the points they mark.
    let aliases: [Int: [String]]

    static let width = 640.0
    static let height = 220.0
    static let left = 72.0, right = 24.0, top = 24.0, bottom = 40.0

    /// The metric a model is plotted by: the document's `key_metric` when it names one, otherwise
    /// the metric most versions have (the first in sorted order among equals). Nil when no
    /// version has metrics.
    static func keyMetric(of model: ModelEntry) -> String? {
        if let named = model.keyMetric, !named.isEmpty { return named }
        var counts: [String: Int] = [:]
        for version in model.versions {
            for name in version.metrics.keys { counts[name, default: 0] += 1 }
        }
        return counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.first?.key
    }

    /// The points of `metric`: every validated or rejected version that has it, by version.
    init(model: ModelEntry, metric: String) {
        self.metric = metric
        points = model.versions
            .filter { $0.status == "validated" || $0.status == "rejected" }
            .compactMap { version in
                version.metrics[metric].flatMap { $0.isFinite ? Point(version: version.version, value: $0, rejected: version.status == "rejected") : nil }
            }
            .sorted { $0.version < $1.version }
        var aliases: [Int: [String]] = [:]
        for (alias, version) in model.aliases { aliases[version, default: []].append(alias) }
        self.aliases = aliases.mapValues { $0.sorted() }
    }

    /// The `<svg>`; `id` is its element id.
    func svg(id: String, modelName: String) -> Markup {
        guard let first = points.first, let last = points.last else { return .empty }
        let values = points.map(\.value)
        var low = values.min()!, high = values.max()!
        let (lowLabel, highLabel) = (low, high)
        if low == high {
            let pad = abs(low) > 0 ? abs(low) * 0.05 : 0.5
            low -= pad
            high += pad
        }
        let plotWidth = Self.width - Self.left - Self.right
        let plotHeight = Self.height - Self.top - Self.bottom
        let span = Double(last.version - first.version)
        func x(_ version: Int) -> Double {
            span == 0 ? Self.left + plotWidth / 2 : Self.left + plotWidth * Double(version - first.version) / span
        }
        func y(_ value: Double) -> Double {
            Self.top + plotHeight * (1 - (value - low) / (high - low))
        }
        func c(_ value: Double) -> Markup { .text(PageFormat.coordinate(value)) }

        let bottomY = Self.top + plotHeight
        let yLabels: Markup = lowLabel == highLabel
            ? "<text class=\"axis-label y-max y-min\" x=\"\(c(Self.left - 6))\" y=\"\(c(y(highLabel) + 4))\" text-anchor=\"end\">\(PageFormat.number(highLabel))</text>"
            : """
                <text class="axis-label y-max" x="\(c(Self.left - 6))" y="\(c(y(highLabel) + 4))" text-anchor="end">\(PageFormat.number(highLabel))</text>
                <text class="axis-label y-min" x="\(c(Self.left - 6))" y="\(c(y(lowLabel) + 4))" text-anchor="end">\(PageFormat.number(lowLabel))</text>
                """
        var out: Markup = """
            <svg class="plot" id="\(id)" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 \(Int(Self.width)) \(Int(Self.height))" \
            width="\(Int(Self.width))" height="\(Int(Self.height))" role="img" \
            aria-label="\(metric) of \(modelName) by version: \(points.count) versions, from \(PageFormat.number(lowLabel)) to \(PageFormat.number(highLabel))">
            <rect class="frame" x="\(c(Self.left))" y="\(c(Self.top))" width="\(c(plotWidth))" height="\(c(plotHeight))"/>
            <line class="grid" x1="\(c(Self.left))" y1="\(c(y(highLabel)))" x2="\(c(Self.left + plotWidth))" y2="\(c(y(highLabel)))"/>
            <line class="grid" x1="\(c(Self.left))" y1="\(c(y(lowLabel)))" x2="\(c(Self.left + plotWidth))" y2="\(c(y(lowLabel)))"/>
            \(yLabels)
            <text class="axis-title y-title" x="14" y="\(c(Self.top + plotHeight / 2))" text-anchor="middle" transform="rotate(-90 14 \(c(Self.top + plotHeight / 2)))">\(metric)</text>
            <text class="axis-label x-min" x="\(c(x(first.version)))" y="\(c(bottomY + 16))" text-anchor="middle">v\(first.version)</text>

            """
        if last.version != first.version {
            out += "<text class=\"axis-label x-max\" x=\"\(c(x(last.version)))\" y=\"\(c(bottomY + 16))\" text-anchor=\"middle\">v\(last.version)</text>\n"
        }
        out += "<text class=\"axis-title x-title\" x=\"\(c(Self.left + plotWidth / 2))\" y=\"\(c(Self.height - 6))\" text-anchor=\"middle\">version</text>\n"
        let validated = points.filter { !$0.rejected }
        if validated.count > 1 {
            let coordinates = validated.map { PageFormat.coordinate(x($0.version)) + "," + PageFormat.coordinate(y($0.value)) }.joined(separator: " ")
            out += "<polyline class=\"line\" points=\"\(coordinates)\"/>\n"
        }
        for point in points {
            let (px, py) = (x(point.version), y(point.value))
            let tip = "v\(point.version) \(point.rejected ? "rejected" : "validated"): \(metric) \(PageFormat.number(point.value))"
            if point.rejected {
                let r = 5.0
                let d = "M\(PageFormat.coordinate(px - r)) \(PageFormat.coordinate(py - r))L\(PageFormat.coordinate(px + r)) \(PageFormat.coordinate(py + r))"
                    + "M\(PageFormat.coordinate(px - r)) \(PageFormat.coordinate(py + r))L\(PageFormat.coordinate(px + r)) \(PageFormat.coordinate(py - r))"
                out += "<path class=\"point rejected\" data-version=\"\(point.version)\" d=\"\(d)\"><title>\(tip)</title></path>\n"
            } else {
                out += "<circle class=\"point validated\" data-version=\"\(point.version)\" cx=\"\(c(px))\" cy=\"\(c(py))\" r=\"5\"><title>\(tip)</title></circle>\n"
            }
            if let names = aliases[point.version] {
                // Kept inside the plot near its left and right edges.
                let anchor = px > Self.left + plotWidth - 60 ? "end" : px < Self.left + 60 ? "start" : "middle"
                out += "<text class=\"alias-label\" x=\"\(c(px))\" y=\"\(c(py - 10))\" text-anchor=\"\(anchor)\">\(names.joined(separator: ", "))</text>\n"
            }
        }
        return out + "</svg>"
    }
}

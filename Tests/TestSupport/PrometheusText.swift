/// A strict reader of the Prometheus text exposition format (0.0.4), for tests of /metrics: every line must be
/// a `# HELP`, a `# TYPE`, another comment, empty, or a sample `name{label="value",…} value [timestamp]`; label
/// values may hold only the escapes `\\`, `\"` and `\n`; a family's TYPE comes at most once and before its
/// samples; a sample's labels are unique. Anything else throws with the line number.
public struct PrometheusText: Sendable {
    public struct Sample: Sendable, Equatable {
        public var name: String
        public var labels: [String: String]
        public var value: Double
    }

    public struct ParseError: Error, CustomStringConvertible {
        public let line: Int
        public let problem: String
        public var description: String { "line \(line): \(problem)" }
    }

    public private(set) var samples: [Sample] = []
    /// Family name → type (counter, gauge, histogram, summary, untyped), and → help text (unescaped).
    public private(set) var types: [String: String] = [:]
    public private(set) var help: [String: String] = [:]

    public init(_ text: String) throws {
        var sampled: Set<String> = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            func fail(_ problem: String) -> ParseError { ParseError(line: number, problem: problem) }
            var line = Substring(raw)
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                guard parts.count >= 3, parts[0] == "#", parts[1] == "HELP" || parts[1] == "TYPE" else { continue }
                let name = String(parts[2])
                guard Self.isMetricName(name) else { throw fail("bad metric name '\(name)'") }
                let rest = parts.count > 3 ? String(parts[3]) : ""
                if parts[1] == "TYPE" {
                    guard types[name] == nil else { throw fail("second TYPE for \(name)") }
                    guard !sampled.contains(name) else { throw fail("TYPE for \(name) after its samples") }
                    guard ["counter", "gauge", "histogram", "summary", "untyped"].contains(rest) else { throw fail("unknown type '\(rest)'") }
                    types[name] = rest
                } else {
                    guard help[name] == nil else { throw fail("second HELP for \(name)") }
                    help[name] = rest.replacingOccurrences(of: "\\n", with: "\n").replacingOccurrences(of: "\\\\", with: "\\")
                }
                continue
            }
            // Metric name.
            let nameEnd = line.firstIndex(where: { $0 == "{" || $0 == " " }) ?? line.endIndex
            let name = String(line[..<nameEnd])
            guard Self.isMetricName(name) else { throw fail("bad metric name '\(name)'") }
            line = line[nameEnd...]
            // Labels.
            var labels: [String: String] = [:]
            if line.first == "{" {
                line = line.dropFirst()
                while line.first != "}" {
                    guard let eq = line.firstIndex(of: "=") else { throw fail("label without '='") }
                    let label = String(line[..<eq])
                    guard Self.isLabelName(label) else { throw fail("bad label name '\(label)'") }
                    line = line[line.index(after: eq)...]
                    guard line.first == "\"" else { throw fail("label value of \(label) is not quoted") }
                    line = line.dropFirst()
                    var value = ""
                    var closed = false
                    while let c = line.first {
                        line = line.dropFirst()
                        if c == "\"" { closed = true; break }
                        if c == "\\" {
                            guard let e = line.first else { throw fail("dangling backslash in \(label)") }
                            line = line.dropFirst()
                            switch e {
                            case "\\": value.append("\\")
                            case "\"": value.append("\"")
                            case "n": value.append("\n")
                            default: throw fail("unknown escape '\\\(e)' in \(label)")
                            }
                        } else {
                            value.append(c)
                        }
                    }
                    guard closed else { throw fail("unterminated value of \(label)") }
                    guard labels.updateValue(value, forKey: label) == nil else { throw fail("label \(label) twice") }
                    if line.first == "," { line = line.dropFirst() } else if line.first != "}" { throw fail("expected ',' or '}' after \(label)") }
                }
                line = line.dropFirst()
            }
            // Value and optional timestamp.
            guard line.first == " " else { throw fail("no value after \(name)") }
            let fields = line.split(separator: " ")
            guard fields.count == 1 || fields.count == 2 else { throw fail("expected a value and at most a timestamp") }
            guard let value = Self.parseValue(fields[0]) else { throw fail("bad value '\(fields[0])'") }
            if fields.count == 2 { guard Int64(fields[1]) != nil else { throw fail("bad timestamp '\(fields[1])'") } }
            samples.append(Sample(name: name, labels: labels, value: value))
            sampled.insert(Self.family(name, types: types))
        }
    }

    /// Samples named `name`.
    public func samples(_ name: String) -> [Sample] { samples.filter { $0.name == name } }

    /// The one sample named `name` (nil when there are none or several).
    public func sample(_ name: String) -> Sample? {
        let found = samples(name)
        return found.count == 1 ? found[0] : nil
    }

    static func family(_ name: String, types: [String: String]) -> String {
        for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
            let base = String(name.dropLast(suffix.count))
            if types[base] == "histogram" || types[base] == "summary" { return base }
        }
        return name
    }

    static func isMetricName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, first == "_" || first == ":" || (first.isASCII && first.properties.isAlphabetic) else { return false }
        return s.unicodeScalars.allSatisfy { $0 == "_" || $0 == ":" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
    }

    static func isLabelName(_ s: String) -> Bool { isMetricName(s) && !s.contains(":") }

    static func parseValue(_ s: Substring) -> Double? {
        switch s {
        case "NaN": return .nan
        case "+Inf", "Inf": return .infinity
        case "-Inf": return -.infinity
        default: return Double(s)
        }
    }
}

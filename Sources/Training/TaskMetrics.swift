import Foundation

/// The automatic metrics of the MoLE task suite (tools/build_mole_tasks.py, docs/design/mole-tasks.md), applied
/// to a greedy generation cut at its first newline:
/// - `exact_match`: the generation equals a reference after trimming and collapsing whitespace, ignoring case;
/// - `choice_accuracy`: the generation's first word is the reference label (ignoring case and punctuation);
/// - `rougeL_max_ref`: ROUGE-L F1 (longest common subsequence of lower-cased word tokens, β = 1) against each
///   reference, the best of them.
public enum TaskMetric: String, Sendable, CaseIterable {
    case exactMatch = "exact_match"
    case choiceAccuracy = "choice_accuracy"
    case rougeL = "rougeL_max_ref"

    /// The score of `prediction` against `references`, in [0, 1].
    public func score(_ prediction: String, references: [String]) -> Double {
        switch self {
        case .exactMatch:
            let p = Self.normalize(prediction)
            return references.contains { Self.normalize($0) == p } ? 1 : 0
        case .choiceAccuracy:
            let first = Self.words(prediction).first ?? ""
            return references.contains { Self.words($0).first == first && !first.isEmpty } ? 1 : 0
        case .rougeL:
            let p = Self.words(prediction)
            return references.map { Self.rougeLF1(p, Self.words($0)) }.max() ?? 0
        }
    }

    /// Trimmed, whitespace runs collapsed to one space, lower case.
    static func normalize(_ s: String) -> String {
        s.split(whereSeparator: \.isWhitespace).joined(separator: " ").lowercased()
    }

    /// Lower-cased word tokens: runs of letters and digits.
    static func words(_ s: String) -> [String] {
        s.lowercased().split { !($0.isLetter || $0.isNumber) }.map(String.init)
    }

    /// F1 of the longest common subsequence: P = lcs/|p|, R = lcs/|r|, F = 2PR / (P + R).
    static func rougeLF1(_ p: [String], _ r: [String]) -> Double {
        guard !p.isEmpty, !r.isEmpty else { return 0 }
        var previous = [Int](repeating: 0, count: r.count + 1), current = previous
        for a in p {
            for (j, b) in r.enumerated() { current[j + 1] = a == b ? previous[j] + 1 : max(previous[j + 1], current[j]) }
            swap(&previous, &current)
        }
        let lcs = Double(previous[r.count])
        guard lcs > 0 else { return 0 }
        let precision = lcs / Double(p.count), recall = lcs / Double(r.count)
        return 2 * precision * recall / (precision + recall)
    }
}

import Foundation
import Models
import Tokenizers

/// A problem with a training data file, naming the file and line.
public struct TrainingDataError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let line: Int?
    public let problem: String
    public init(file: String, line: Int? = nil, problem: String) {
        self.file = file
        self.line = line
        self.problem = problem
    }
    public var description: String { line.map { "\(file):\($0): \(problem)" } ?? "\(file): \(problem)" }
}

/// One tokenized example: the tokens, and from which index on they are predicted (the completion).
public struct TrainingExample: Sendable, Equatable {
    public var tokens: [Int]
    /// Tokens at indices ≥ this are targets (index 1 for plain text: every token but the first).
    public var completionStart: Int
    public init(tokens: [Int], completionStart: Int) {
        self.tokens = tokens
        self.completionStart = completionStart
    }
}

/// A JSONL training set: one JSON object per line, either `{"prompt": …, "completion": …}` (loss on the
/// completion's tokens only) or `{"text": …}` (loss on every token after the first). Blank lines are
/// skipped. Prompt (or text) is tokenized with the tokenizer's special prefix (BOS when it adds one), the
/// completion without; the end-of-sequence token ends every example when the tokenizer has one, so the
/// model learns to stop (as TRL's SFT does). Examples longer than `maxLength` are cut at the end.
public struct TrainingData: Sendable {
    public let examples: [TrainingExample]
    /// Examples dropped because nothing of their completion was left within `maxLength`.
    public let dropped: Int

    public static let maxFileBytes = 1 << 30
    public static let maxLineBytes = 16 << 20

    public init(examples: [TrainingExample], dropped: Int = 0) {
        self.examples = examples
        self.dropped = dropped
    }

    public init(path: String, tokenizer: Tokenizer, maxLength: Int) throws {
        precondition(maxLength >= 2)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw TrainingDataError(file: path, problem: "no such file")
        }
        guard !isDirectory.boolValue else { throw TrainingDataError(file: path, problem: "is a directory, expected a JSONL file") }
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        if let size = attributes?[.size] as? Int, size > Self.maxFileBytes {
            throw TrainingDataError(file: path, problem: "is \(size) bytes; at most \(Self.maxFileBytes) are accepted")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrainingDataError(file: path, problem: "cannot be read")
        }
        try self.init(jsonl: data, file: path, tokenizer: tokenizer, maxLength: maxLength)
    }

    public init(jsonl data: Data, file: String, tokenizer: Tokenizer, maxLength: Int) throws {
        precondition(maxLength >= 2)
        guard let text = String(data: data, encoding: .utf8) else {
            throw TrainingDataError(file: file, problem: "is not UTF-8 text")
        }
        var examples: [TrainingExample] = []
        var dropped = 0
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty { continue }
            let number = index + 1
            func fail(_ problem: String) -> TrainingDataError { TrainingDataError(file: file, line: number, problem: problem) }
            guard line.utf8.count <= Self.maxLineBytes else { throw fail("line longer than \(Self.maxLineBytes) bytes") }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)), let fields = object as? [String: Any] else {
                throw fail("not a JSON object")
            }
            let known: Set<String> = ["prompt", "completion", "text"]
            if let unknown = fields.keys.sorted().first(where: { !known.contains($0) }) {
                throw fail("unexpected key '\(unknown.prefix(64))' (expected prompt + completion, or text)")
            }
            func string(_ key: String) throws -> String? {
                guard let v = fields[key] else { return nil }
                guard let s = v as? String else { throw fail("\(key) must be a string") }
                return s
            }
            let prompt = try string("prompt"), completion = try string("completion"), plain = try string("text")
            var tokens: [Int]
            let start: Int
            switch (prompt, completion, plain) {
            case (let p?, let c?, nil):
                guard !c.isEmpty else { throw fail("completion is empty") }
                tokens = tokenizer.encode(p, addSpecial: true, parseSpecial: false)
                start = tokens.count
                tokens += tokenizer.encode(c, addSpecial: false, parseSpecial: false)
            case (nil, nil, let t?):
                guard !t.isEmpty else { throw fail("text is empty") }
                tokens = tokenizer.encode(t, addSpecial: true, parseSpecial: false)
                start = 1
            default:
                throw fail("expected either prompt and completion, or text")
            }
            if let eos = tokenizer.eosTokenID { tokens.append(eos) }
            if tokens.count > maxLength { tokens.removeLast(tokens.count - maxLength) }
            // At least one target, and a token before it to predict it from.
            if tokens.count <= max(start, 1) {
                dropped += 1
                continue
            }
            examples.append(TrainingExample(tokens: tokens, completionStart: max(start, 1)))
        }
        guard !examples.isEmpty else {
            throw TrainingDataError(file: file, problem: dropped > 0
                ? "no example has a completion token within --max-length \(maxLength) (\(dropped) dropped)"
                : "holds no examples")
        }
        self.examples = examples
        self.dropped = dropped
    }

    /// A batch of the given examples, padded to the longest: position t of example e predicts token t + 1
    /// when that token is a target; padding positions predict nothing (and sit after the example, so
    /// causal attention keeps them out of its real positions).
    public static func batch(_ examples: [TrainingExample], padToken: Int = 0) -> TrainingBatch {
        let length = examples.map(\.tokens.count).max() ?? 1
        var tokens = [Int32](repeating: Int32(padToken), count: examples.count * length)
        var labels = [Int32](repeating: -1, count: examples.count * length)
        for (b, e) in examples.enumerated() {
            for (t, id) in e.tokens.enumerated() {
                tokens[b * length + t] = Int32(id)
                if t >= 1 && t >= e.completionStart { labels[b * length + t - 1] = Int32(id) }
            }
        }
        return TrainingBatch(batch: examples.count, length: length, tokens: tokens, labels: labels,
                             lengths: examples.map(\.tokens.count))
    }
}

/// Endless batches of `size` examples: each pass over the data in a fresh seeded order.
public struct BatchSampler {
    public let data: TrainingData
    public let size: Int
    private var order: [Int] = []
    private var next = 0
    private var rng: SeededGenerator

    public init(data: TrainingData, size: Int, seed: UInt64) {
        precondition(size > 0)
        self.data = data
        self.size = size
        rng = SeededGenerator(seed: seed ^ 0xD1B5_4A32_D192_ED03)
    }

    public mutating func nextBatch() -> TrainingBatch {
        var picked: [TrainingExample] = []
        while picked.count < size {
            if next == order.count {
                order = Array(data.examples.indices).shuffled(using: &rng)
                next = 0
            }
            picked.append(data.examples[order[next]])
            next += 1
        }
        return TrainingData.batch(picked)
    }
}

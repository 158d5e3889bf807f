import Foundation
import Testing
import TestSupport
@testable import Tokenizers

/// Encoding speed, printed and not asserted (debug builds are several times slower than release).
@Suite struct TokenizerThroughputTests {
    /// ~100 KB of mixed text: prose with varied numbers and words, code, and some non-Latin scripts.
    static func sampleText(bytes: Int = 100_000) -> String {
        let words = ["the", "model", "adapter", "tokenizer", "request", "scheduler", "merges", "quickly", "server's",
                     "don't", "Llama", "streaming", "naïve", "Привет", "你好世界", "😀", "x", "parameters", "batch"]
        var rng = SplitMix64(seed: 42)
        var text = ""
        while text.utf8.count < bytes {
            switch rng.next() % 10 {
            case 0: text += "func f\(rng.next() % 1000)(x: Int) -> Int {\n    return x * \(rng.next() % 97)\n}\n"
            case 1: text += " \(rng.next() % 100_000).\(rng.next() % 100)"
            case 2: text += ".\n\n"
            default: text += " " + words[Int(rng.next() % UInt64(words.count))]
            }
        }
        return text
    }

    func measure(_ label: String, _ tokenizer: Tokenizer, _ text: String) {
        let clock = ContinuousClock()
        var ids: [Int] = []
        let cold = clock.measure { ids = tokenizer.encode(text, addSpecial: false) }
        let warm = clock.measure { ids = tokenizer.encode(text, addSpecial: false) }
        func rate(_ d: Duration) -> String {
            let s = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
            return String(format: "%.2f MB/s", Double(text.utf8.count) / s / 1e6)
        }
        print("tokenizer throughput \(label): \(text.utf8.count) bytes → \(ids.count) ids; first pass \(rate(cold)), "
              + "cached words \(rate(warm))")
        #expect(tokenizer.decode(ids, skipSpecial: false) == text)
    }

    @Test func encodeThroughput() throws {
        let text = Self.sampleText()
        measure("tiny-llama3", try Tokenizer(directory: TokenizerFixtures.directory("tiny-llama3")), text)
        measure("tiny-spm (gguf)", try Tokenizer(metadata: TokenizerFixtures.ggufMetadata("tiny-spm")), text)
        measure("smollm2", try Tokenizer(metadata: TokenizerFixtures.smolLM2Metadata.get()), text)
    }
}

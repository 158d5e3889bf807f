import Foundation

/// Tests/Fixtures: tiny models, goldens from the reference implementations, tokenizer and LoRA fixtures
/// (`MANIFEST.sha256` covers every file; Tests/Fixtures/README.md says what each holds).
public enum FixtureFiles {
    public static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    public static let models = root.appendingPathComponent("models")
    public static let tokenizers = root.appendingPathComponent("tokenizers")
    public static let lora = root.appendingPathComponent("lora")

    /// A tiny model's checkpoint: its `hf/` directory (variant "hf") or its GGUF file of that variant.
    public static func checkpoint(model: String, variant: String) -> String {
        variant == "hf" ? models.appendingPathComponent("\(model)/hf").path
            : models.appendingPathComponent("\(model)/\(model).\(variant).gguf").path
    }

    /// A golden file as the tools/ generators write it (snake_case keys).
    public static func decodeGolden<T: Decodable>(_ type: T.Type, at url: URL) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(type, from: Data(contentsOf: url))
    }
}

/// A scratch directory, removed when the value is released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let url: URL

    public init(prefix: String = "dlora-test") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    public func file(_ name: String) -> URL { url.appendingPathComponent(name) }
    public func path(_ name: String) -> String { file(name).path }

    deinit { try? FileManager.default.removeItem(at: url) }
}

/// The executables `swift build --build-tests` builds beside the test bundle.
public enum BuiltExecutables {
    /// The `dlora` executable, found by walking up from the test bundle's folder; nil when it is not built.
    public static var dlora: URL? {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("dlora")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir.deleteLastPathComponent()
        }
        return nil
    }
}

import Foundation

/// The default model: SmolLM2-135M-Instruct Q4_1 (shared/DESIGN.md), which `scripts/fetch-model.sh` downloads
/// into `$XDG_CACHE_HOME/dlora` (or `~/.cache/dlora`) and checks by sha256. The CLI and every test find it
/// here, so a cache moved with XDG_CACHE_HOME is found by all of them or by none.
public enum DefaultModel {
    public static let fileName = "SmolLM2-135M-Instruct.Q4_1.gguf"

    /// Where the default model is expected, whether or not it is there.
    public static var path: String { path(environment: ProcessInfo.processInfo.environment) }

    /// `path` for a given environment (XDG_CACHE_HOME, else HOME's `.cache`).
    public static func path(environment: [String: String]) -> String {
        let cache = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache")
        return ((cache as NSString).appendingPathComponent("dlora") as NSString).appendingPathComponent(fileName)
    }

    public static var isPresent: Bool { FileManager.default.fileExists(atPath: path) }

    /// The default model is not where it is expected.
    public struct Missing: Error, CustomStringConvertible {
        public let path: String
        public var description: String { "the default model is not at \(path) (run scripts/fetch-model.sh)" }
    }

    /// The default model's path; throws `Missing`, naming the path and scripts/fetch-model.sh, when it is absent.
    public static func require() throws -> String {
        let p = path
        guard FileManager.default.fileExists(atPath: p) else { throw Missing(path: p) }
        return p
    }
}

import Foundation
import Kernels
import Models
import Testing
import TestSupport

@testable import Adapters

/// Static compositions (composition.json) as untrusted input: every malformed manifest is one clear error,
/// names stay under the root, compositions do not nest; and `normalize` divides by the weights' sum.
@Suite struct CompositionTests {
    static func root() throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        for name in ["a-qv-r4", "c-kod-r2"] {
            try FileManager.default.copyItem(at: FixtureFiles.lora.appendingPathComponent("tiny-llama/\(name)"), to: dir.file(name))
        }
        return dir
    }

    static func config() throws -> ModelConfig { try openCheckpoint(path: FixtureFiles.checkpoint(model: "tiny-llama", variant: "F32")).config }

    @Test func malformedManifestsAreClearErrors() throws {
        let dir = try Self.root()
        let c = try Self.config()
        let cases: [(String, String)] = [
            ("[1]", "not a JSON object"),
            ("{", "not valid JSON"),
            (#"{"adapters": []}"#, "between 1 and 64"),
            (#"{"combination": "dare_linear", "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "dare_linear needs a density"),
            (#"{"combination": "svd", "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "'svd' is not supported"),
            (#"{"combination": "dare_ties", "density": 0.5, "seed": -1, "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "seed must be an integer"),
            (#"{"combination": "dare_ties", "density": 0.5, "seed": 0.5, "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "seed must be an integer"),
            (#"{"combination": "ties", "density": 0.5, "seed": 3, "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "seed applies to dare_linear and dare_ties only"),
            (#"{"combination": "dare_linear", "density": 0.5, "majority_sign_method": "total", "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "majority_sign_method applies to ties and dare_ties only"),
            (#"{"combination": "ties", "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "ties needs a density"),
            (#"{"combination": "ties", "density": 0, "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "density must be in (0, 1]"),
            (#"{"combination": "ties", "density": "half", "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "density must be a number"),
            (#"{"combination": "ties", "density": 0.5, "majority_sign_method": "mean", "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "majority_sign_method must be"),
            (#"{"density": 0.5, "adapters": [{"name": "a-qv-r4", "weight": 1}]}"#, "density applies to ties, dare_linear and dare_ties only"),
            (#"{"combination": "linear", "adapters": [{"name": "a-qv-r4", "weight": 1}, {"name": "c-kod-r2", "weight": 1}]}"#, "one rank"),
            (#"{"adapters": [{"name": "../a-qv-r4", "weight": 1}]}"#, "not a plain adapter name"),
            (#"{"adapters": [{"name": "a-qv-r4", "weight": 1e40}]}"#, "finite"),
            (#"{"adapters": [{"name": "a-qv-r4"}]}"#, "needs a name and a weight"),
            (#"{"adapters": [{"name": "a-qv-r4", "weight": 1, "scale": 2}]}"#, "unexpected 'scale'"),
            (#"{"adapters": [{"name": "a-qv-r4", "weight": 1}, {"name": "a-qv-r4", "weight": 2}]}"#, "appears twice"),
            (#"{"adapters": [{"name": "a-qv-r4", "weight": 1}], "extra": 1}"#, "unknown key 'extra'"),
            (#"{"adapters": [{"name": "missing", "weight": 1}]}"#, "adapter 'missing'"),
            (#"{"adapters": [{"name": "a-qv-r4", "weight": 1}, {"name": "c-kod-r2", "weight": -1}], "normalize": true}"#, "sum to 0"),
            (#"{"adapters": [{"name": "inner", "weight": 1}]}"#, "itself a composition"),
        ]
        try FileManager.default.createDirectory(at: dir.file("inner"), withIntermediateDirectories: true)
        try Data(#"{"adapters": [{"name": "a-qv-r4", "weight": 1}]}"#.utf8).write(to: dir.file("inner/composition.json"))
        try FileManager.default.createDirectory(at: dir.file("mix"), withIntermediateDirectories: true)
        let root = try #require(URL(fileURLWithPath: dir.url.path).resolvingSymlinksInPath().path as String?)
        for (text, expected) in cases {
            try Data(text.utf8).write(to: dir.file("mix/composition.json"))
            #expect {
                _ = try AdapterLoader.load(path: dir.path("mix"), base: c, confinedTo: root)
            } throws: { error in
                "\(error)".contains(expected)
            }
        }
        // A sibling that is a symbolic link out of the root is refused by the loader's confinement.
        try FileManager.default.createSymbolicLink(atPath: dir.path("escape"), withDestinationPath: FixtureFiles.lora.appendingPathComponent("tiny-llama/a-qv-r4").path)
        try Data(#"{"adapters": [{"name": "escape", "weight": 1}]}"#.utf8).write(to: dir.file("mix/composition.json"))
        #expect(throws: AdapterError.self) { _ = try AdapterLoader.load(path: dir.path("mix"), base: c, confinedTo: root) }
    }

    /// The registry's file identity of a composition covers its manifest: an edited composition.json is new files
    /// (a reload gets a new adapter id, so no engine keeps state of the old composition).
    @Test func editingTheManifestChangesTheIdentity() throws {
        let dir = try Self.root()
        try FileManager.default.createDirectory(at: dir.file("mix"), withIntermediateDirectories: true)
        try Data(#"{"adapters": [{"name": "a-qv-r4", "weight": 1}]}"#.utf8).write(to: dir.file("mix/composition.json"))
        let before = AdapterFiles.identity(of: dir.path("mix"))
        #expect(AdapterFiles.identity(of: dir.path("mix")) == before)
        try Data(#"{"adapters": [{"name": "a-qv-r4", "weight": 2.5}]}"#.utf8).write(to: dir.file("mix/composition.json"))
        #expect(AdapterFiles.identity(of: dir.path("mix")) != before)
    }

    /// A composition that failed because of one of its parts is remembered as failed only while the parts' files are
    /// unchanged too: fixing the part (the manifest untouched) makes the composition load on the next request.
    @Test func aFailedCompositionLoadsOnceItsPartIsFixed() throws {
        let dir = try Self.root()
        let c = try Self.config()
        try FileManager.default.createDirectory(at: dir.file("mix"), withIntermediateDirectories: true)
        try Data(#"{"adapters": [{"name": "a-qv-r4", "weight": 1}, {"name": "c-kod-r2", "weight": 1}]}"#.utf8)
            .write(to: dir.file("mix/composition.json"))
        let tensors = dir.file("c-kod-r2/adapter_model.safetensors")
        let good = try Data(contentsOf: tensors)
        try Data([16, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8)).write(to: tensors)
        let registry = try AdapterRegistry(root: dir.url.path, base: c)
        #expect(throws: AdapterError.self) { try registry.load("mix") }
        let attempts = registry.loadAttempts
        #expect(throws: AdapterError.self) { try registry.load("mix") }
        #expect(registry.loadAttempts == attempts, "the failure is remembered while nothing changed")
        try good.write(to: tensors)
        #expect(try registry.load("mix").targets == [.q, .k, .v, .o, .down])
    }

    /// cat: ranks add up per module, scaling 1, A rows = w·s·Aᵢ, B columns = Bᵢ; normalize divides by Σw.
    @Test func catStacksScaledPartsAndNormalizes() throws {
        let dir = try Self.root()
        let c = try Self.config()
        let a = try AdapterLoader.load(path: dir.path("a-qv-r4"), base: c)
        try FileManager.default.createDirectory(at: dir.file("mix"), withIntermediateDirectories: true)
        try Data(#"{"adapters": [{"name": "a-qv-r4", "weight": 3}, {"name": "c-kod-r2", "weight": 1}], "normalize": true}"#.utf8)
            .write(to: dir.file("mix/composition.json"))
        let mix = try AdapterLoader.load(path: dir.path("mix"), base: c)
        #expect(mix.scale == 1)
        #expect(mix.targets == [.q, .k, .v, .o, .down])
        let q = try #require(mix.module(layer: 0, target: .q)), aq = try #require(a.module(layer: 0, target: .q))
        #expect(q.rank == 4)  // only a adapts q
        func floats(_ m: WeightMatrix) -> [Float] {
            var out = [Float](repeating: 0, count: m.rows * m.cols)
            out.withUnsafeMutableBufferPointer { Kernels.dequantize(m.dtype, m.data, count: m.rows * m.cols, into: $0.baseAddress!) }
            return out
        }
        let qa = floats(q.a), aqa = floats(aq.a)
        for i in [0, 5, 4 * q.inFeatures - 1] { #expect(abs(qa[i] - 0.75 * a.scale * aqa[i]) < 1e-6) }
        #expect(try #require(mix.module(layer: 1, target: .k)).rank == 2)
    }
}

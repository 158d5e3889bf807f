// Removed once the checkpoint and tokenizer tests land.
import Testing
@Test func modelsTargetBuilds() { #expect(Bool(true)) }

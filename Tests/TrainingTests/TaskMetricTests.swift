import Testing

@testable import Training

/// The task suite's metrics on hand-worked cases.
@Suite struct TaskMetricTests {
    @Test func exactMatch() {
        #expect(TaskMetric.exactMatch.score(" 109", references: [" 109"]) == 1)
        #expect(TaskMetric.exactMatch.score("the nurse  does NOT play tennis ", references: [" the nurse does not play tennis"]) == 1)
        #expect(TaskMetric.exactMatch.score(" 1090", references: [" 109"]) == 0)
        #expect(TaskMetric.exactMatch.score("b", references: ["a", " B "]) == 1)
        #expect(TaskMetric.exactMatch.score("", references: [" 1"]) == 0)
    }

    @Test func choiceAccuracy() {
        #expect(TaskMetric.choiceAccuracy.score(" positive", references: [" positive"]) == 1)
        #expect(TaskMetric.choiceAccuracy.score(" Positive. It is", references: [" positive"]) == 1)
        #expect(TaskMetric.choiceAccuracy.score(" negative", references: [" positive"]) == 0)
        #expect(TaskMetric.choiceAccuracy.score("  ", references: [" positive"]) == 0)
    }

    /// ROUGE-L F1 = 2PR/(P+R) with P = LCS/|prediction|, R = LCS/|reference| over lower-cased words.
    @Test func rougeL() {
        // LCS "the cat on the mat" = 5 of 6 and 6: F = 5/6.
        let f = TaskMetric.rougeL.score("The cat sat on the mat", references: ["the cat is on the mat"])
        #expect(abs(f - 5.0 / 6.0) < 1e-12)
        // LCS 2 ("a c") of |p| = 2 and |r| = 4: P = 1, R = 0.5, F = 2/3; the best reference counts.
        #expect(abs(TaskMetric.rougeL.score("a c", references: ["x", "a b c d"]) - 2.0 / 3.0) < 1e-12)
        #expect(TaskMetric.rougeL.score("q", references: ["a b"]) == 0)
        #expect(TaskMetric.rougeL.score("Blue Spice, a pub.", references: ["blue spice a pub"]) == 1)
    }
}

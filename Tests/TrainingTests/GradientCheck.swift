import Foundation
import TestSupport
import Testing

@testable import Training

/// Central differences of `f` at `x` in f64, for the coordinates `indices` (all when nil):
/// (f(x + h·eᵢ) − f(x − h·eᵢ)) / 2h. With h = 1e-5 the truncation error is O(h²·f''') ≈ 1e-10 and the
/// rounding error O(ε·|f| / h) ≈ 1e-11: far below the f32 backward's own error.
func numericGradient(_ x: [Double], indices: [Int]? = nil, h: Double = 1e-5, _ f: ([Double]) -> Double) -> [Double] {
    var x = x
    return (indices ?? Array(x.indices)).map { i in
        let keep = x[i]
        x[i] = keep + h
        let plus = f(x)
        x[i] = keep - h
        let minus = f(x)
        x[i] = keep
        return (plus - minus) / (2 * h)
    }
}

/// Σ y·g: turns an op's output into the scalar that is differentiated (its gradient with respect to y is g).
func project(_ y: [Double], _ g: [Double]) -> Double { zip(y, g).reduce(0) { $0 + $1.0 * $1.1 } }

/// The f32 analytic gradient matches the f64 numerical one: max|a − n| ≤ rtol · max|n|. The gradients
/// compared are never near zero as a whole (checked), so a missing or wrong term shows as an O(1) relative
/// error while f32 rounding stays near 1e-6.
func expectGradient(_ analytic: [Float], _ numeric: [Double], rtol: Double = 1e-3, _ what: String,
                    sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(analytic.count == numeric.count, "\(what): \(analytic.count) vs \(numeric.count) values", sourceLocation: sourceLocation)
    let scale = numeric.reduce(0) { max($0, abs($1)) }
    #expect(scale > 1e-4, "\(what): the numerical gradient is ~0 (max \(scale)): the check would be vacuous", sourceLocation: sourceLocation)
    var worst = 0.0
    for (a, n) in zip(analytic, numeric) {
        guard a.isFinite else { worst = .infinity; break }
        worst = max(worst, abs(Double(a) - n))
    }
    #expect(worst <= rtol * scale, "\(what): max |analytic − numeric| = \(worst), max |numeric| = \(scale)", sourceLocation: sourceLocation)
}

/// f32 values and their f64 copy, drawn uniform in ±scale.
func randomValues(_ n: Int, _ rng: inout SplitMix64, scale: Float = 1) -> [Float] { (0..<n).map { _ in rng.float() * scale } }

extension Array where Element == Float {
    var f64: [Double] { map(Double.init) }
}

extension Array where Element == Double {
    var f32: [Float] { map(Float.init) }
}

/// Calls `body` with mutable pointers to copies of the arrays, then writes them back.
func withPointers<R>(_ a: inout [Float], _ body: (UnsafeMutablePointer<Float>) -> R) -> R {
    a.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
}

/// Evenly spread sample of `count` indices from 0..<n (all when n ≤ count).
func sampleIndices(_ n: Int, count: Int, _ rng: inout SplitMix64) -> [Int] {
    guard n > count else { return Array(0..<n) }
    var picked = Set<Int>()
    while picked.count < count { picked.insert(rng.int(0..<n)) }
    return picked.sorted()
}

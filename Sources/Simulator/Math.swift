// The C math library only (no Foundation): the simulator needs logarithms, powers and a cosine for its
// random draws, nothing else.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) func logarithm(_ x: Double) -> Double { log(x) }
@inline(__always) func exponential(_ x: Double) -> Double { exp(x) }
@inline(__always) func power(_ x: Double, _ y: Double) -> Double { pow(x, y) }
@inline(__always) func cosine(_ x: Double) -> Double { cos(x) }
/// −log(1 − u) without losing precision near 0.
@inline(__always) func log1pNegated(_ u: Double) -> Double { -log1p(-u) }

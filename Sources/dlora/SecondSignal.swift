import Dispatch
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A second SIGTERM or SIGINT while the first one's graceful shutdown runs: `cutShort` ends the wait at once (the
/// server cancels its running requests, which end as they would at the drain's deadline), and a process still there
/// `grace` seconds later exits with status 1 without waiting further (grace 0: at once, after `beforeExit`) — as a
/// second Ctrl-C does in uvicorn and vLLM.
/// The first signal is the service group's (it starts the graceful shutdown); this only counts. Armed just before the
/// group runs: a signal in between is counted here, and a second one still ends the process.
final class SecondSignal: @unchecked Sendable {
    private let queue = DispatchQueue(label: "dlora.second-signal")
    private var sources: [any DispatchSourceSignal] = []
    private var count = 0
    private var fired = false

    init(grace: Double = 5, beforeExit: @escaping @Sendable () -> Void = {}, cutShort: @escaping @Sendable () -> Void = {}) {
        sources = watchTerminationSignals(on: queue) { [unowned self] _, arrived in
            count += arrived
            guard count >= 2, !fired else { return }
            fired = true
            let exit: @Sendable () -> Void = {
                StandardError.write("dlora: second signal: exiting without waiting further\n")
                beforeExit()
                _exit(1)
            }
            guard grace > 0 else { return exit() }
            StandardError.write("dlora: second signal: cancelling running requests; exiting in \(grace) s at the latest\n")
            cutShort()
            queue.asyncAfter(deadline: .now() + grace, execute: exit)
        }
    }

    deinit { for s in sources { s.cancel() } }
}

/// SIGTERM and SIGINT delivered to `handler` on `queue` (the signal, and how many of it arrived since the handler last
/// ran) instead of their default action; watched while the returned sources live (cancel them to stop). The service
/// group ignores the signals and watches them the same way, so both see each one.
func watchTerminationSignals(on queue: DispatchQueue, _ handler: @escaping (Int32, Int) -> Void) -> [any DispatchSourceSignal] {
    [SIGTERM, SIGINT].map { sig in
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
        source.setEventHandler { handler(sig, Int(source.data)) }  // released when the source is cancelled
        source.resume()
        return source
    }
}

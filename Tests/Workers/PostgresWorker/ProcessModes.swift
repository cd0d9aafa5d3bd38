import Backstage
import BackstagePostgres
import BackstageTestSupport
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

// holds <url> <schema> <role> [<kill after n dispatches> | <start at, ms since 1970>]
//   role `full`: runs the hold process manager (PipelineService + PostgresLeadership) and a
//     CommandScheduler; with a count, SIGKILLs itself right after the n-th dispatch stored its
//     events (before the outbox row is deleted).
//   role `scheduler`: only a CommandScheduler, from the given wall-clock instant (so several
//     processes race for the same due commands).
//   Prints `started`, then `dispatched <command id> dup=<bool>` after each dispatch that stored
//   (or found) its events.

/// Prints each dispatch; kills the process after the n-th one when asked.
struct DispatchReporter: Middleware {
    let killAfter: Int?
    let count = Locked(0)
    func afterDispatch(_ context: CommandContext, result: DispatchSummary) async {
        emit("dispatched \(context.commandID) dup=\(result.isDuplicate)")
        let n = count.withLock { c -> Int in
            c += 1
            return c
        }
        if let killAfter, n >= killAfter { Glibc.kill(getpid(), SIGKILL) }
    }
}

func runHoldsMode(_ arguments: [String]) async throws {
    guard arguments.count >= 5 else { fail("usage: holds <url> <schema> full|scheduler [n]") }
    var configuration = PostgresEventStore.Configuration()
    configuration.schema = arguments[3]
    configuration.maximumConnections = 6
    try await PostgresEventStore.withStore(url: arguments[2], configuration: configuration) { store in
        let extra = arguments.count > 5 ? Int(arguments[5]) : nil
        let role = arguments[4]
        let app = BackstageApp(
            store: store, router: try .holds(),
            middleware: [ValidationMiddleware(), DispatchReporter(killAfter: role == "full" ? extra : nil)])
        let processes = PostgresProcessStore(store: store)
        let manager = try ProcessManagerProjection(
            HoldProcess(holdTime: .seconds(600), options: ProjectionOptions(batchTimeout: .milliseconds(1))),
            store: processes)
        let scheduler = CommandScheduler(
            app: app, store: processes, commands: .holds, processManagers: [manager], pollInterval: .milliseconds(100))
        switch role {
        case "full":
            let pipelines = try PipelineService(app: app, projections: [manager])
            emit("started")
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await pipelines.run() }
                group.addTask { try await scheduler.run() }
                try await group.waitForAll()
            }
        case "scheduler":
            if let startAt = extra {
                let wait = Double(startAt) / 1000 - Date().timeIntervalSince1970
                if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
            }
            emit("started")
            try await scheduler.run()
        default:
            fail("unknown holds role \(role)")
        }
    }
}

import Backstage
import BackstageSQLite
import Foundation

/// The box-office demo: many concurrent tasks schedule shows, add tickets, sell and refund them.
///
/// Shows are named `show-1` ... `show-N`; a run picks up their stored state, so a second run on
/// the same database continues the same shows (more sales, refunds, and sold-out rejections).
public struct Demo: Sendable {
    /// Commands to dispatch in total.
    public var commands = 10_000
    /// Concurrent tasks dispatching them.
    public var tasks = 64
    /// Commands per show: the number of shows is `commands / commandsPerShow`.
    public var commandsPerShow = 100
    /// Seats of each show.
    public var capacity = 40

    /// The defaults: 10,000 commands from 64 tasks.
    public init() {}

    /// Runs the demo on `app` and reports what happened.
    public func run(on app: BackstageApp) async throws -> DemoReport {
        let showCount = max(1, commands / max(1, commandsPerShow))
        let eventsBefore = try await app.store.headPosition().position
        let sqlite = app.store as? SQLiteEventStore
        let statisticsBefore = sqlite?.statistics
        let start = ContinuousClock.now
        let tally = try await withThrowingTaskGroup(of: Tally.self) { group in
            // Each task plays its own shows, one after the other: show `task + 1`, `task + 1 + tasks`, ...
            let taskCount = max(1, tasks)
            for task in 0..<taskCount {
                group.addTask {
                    var tally = Tally()
                    for index in stride(from: task, to: showCount, by: taskCount) {
                        // Spread the remainder so that exactly `commands` are dispatched.
                        let budget = commands / showCount + (index < commands % showCount ? 1 : 0)
                        try await play(show: index + 1, budget: budget, app: app, tally: &tally)
                    }
                    return tally
                }
            }
            var total = Tally()
            for try await tally in group { total.merge(tally) }
            return total
        }
        let elapsed = ContinuousClock.now - start
        var groupCommit: DemoReport.GroupCommit?
        if let before = statisticsBefore, let after = sqlite?.statistics {
            groupCommit = DemoReport.GroupCommit(
                appends: after.appends - before.appends, transactions: after.transactions - before.transactions,
                largestGroup: after.largestGroup)
        }
        let sampleShow = "show-1"
        let history = try await app.history(Show.self, id: sampleShow)
        // The ticket of the show with the longest story.
        let stories = Dictionary(grouping: history.filter { $0.event.ticketID != nil }) { $0.event.ticketID ?? "" }
        let ticket =
            stories.max { a, b in (a.value.count, b.key) < (b.value.count, a.key) }?.key ?? "\(sampleShow)-t1"
        let current = try await app.load(Show.self, id: sampleShow)
        let earlier = try await app.load(Show.self, id: sampleShow, atVersion: max(1, current.version / 4))
        return DemoReport(
            commands: tally.accepted + tally.rejected, tasks: tasks, shows: showCount, elapsed: elapsed,
            accepted: tally.accepted, rejections: tally.rejections, sampleRejection: tally.sample,
            eventsBefore: eventsBefore, eventsAfter: try await app.store.headPosition().position,
            groupCommit: groupCommit,
            ticketID: ticket, ticketHistory: history.filter { $0.event.ticketID == ticket },
            showID: sampleShow, earlier: earlier, current: current)
    }

    /// One show's script: schedule it if new, add tickets up to capacity, then sell and refund
    /// tickets until the budget of commands is spent.
    private func play(show number: Int, budget: Int, app: BackstageApp, tally: inout Tally) async throws {
        let showID = "show-\(number)"
        var state = try await app.load(Show.self, id: showID).state
        var remaining = budget

        func send<C: Command>(_ command: C) async throws where C.Target == Show {
            remaining -= 1
            do {
                state = try await app.dispatch(command).state
                tally.accepted += 1
            } catch let rejection as ShowError {
                tally.reject(String(describing: command), rejection)
            }
        }

        if state.id == nil, remaining > 0 {
            try await send(ScheduleShow(showID: showID, title: "Show \(number)", capacity: capacity))
        }
        while remaining > 0, state.tickets.count < state.capacity {
            try await send(AddTicket(showID: showID, ticketID: "\(showID)-t\(state.tickets.count + 1)"))
        }
        // The box office is open: three sales for every refund; a sold-out show refunds first. Once
        // per run, a buyer tries a sold-out show and a ticket is refunded twice: both are rejected.
        var step = 0
        var triedSoldOut = false
        var triedDoubleRefund = false
        while remaining > 0 {
            step += 1
            let sold = state.tickets.filter { $0.value == .sold }.keys.sorted()
            if step % 4 == 0 || (state.onSale.isEmpty && triedSoldOut), !sold.isEmpty {
                let ticket = sold[(step * 7) % sold.count]
                try await send(RefundTicket(showID: showID, ticketID: ticket))
                if !triedDoubleRefund, remaining > 0 {
                    triedDoubleRefund = true
                    try await send(RefundTicket(showID: showID, ticketID: ticket))
                }
            } else {
                if state.onSale.isEmpty { triedSoldOut = true }
                try await send(SellTicket(showID: showID, buyer: "buyer-\(number)-\(step)"))
            }
        }
    }
}

/// Counts of one worker, merged at the end.
private struct Tally: Sendable {
    var accepted = 0
    var rejections: [String: Int] = [:]
    var sample: DemoReport.Rejection?
    var rejected: Int { rejections.values.reduce(0, +) }

    mutating func reject(_ command: String, _ error: ShowError) {
        rejections[error.code, default: 0] += 1
        // Keep a double refund as the example if there is one.
        if sample == nil || (sample!.error.code != "alreadyRefunded" && error.code == "alreadyRefunded") {
            sample = DemoReport.Rejection(command: command, error: error)
        }
    }

    mutating func merge(_ other: Tally) {
        accepted += other.accepted
        rejections.merge(other.rejections, uniquingKeysWith: +)
        if let theirs = other.sample, sample == nil || theirs.error.code == "alreadyRefunded" { sample = theirs }
    }
}

/// What a demo run did and measured.
public struct DemoReport: Sendable {
    /// A command that a business rule rejected, and why.
    public struct Rejection: Sendable {
        /// The command.
        public var command: String
        /// The rule it broke.
        public var error: ShowError
    }

    /// How SQLite wrote the appends: many appends per transaction (one sync each).
    public struct GroupCommit: Sendable {
        /// Appends written.
        public var appends: Int
        /// Transactions that wrote them.
        public var transactions: Int
        /// Most appends in one transaction.
        public var largestGroup: Int
    }

    /// Commands dispatched.
    public var commands: Int
    /// Concurrent tasks.
    public var tasks: Int
    /// Shows played.
    public var shows: Int
    /// Time to dispatch them all.
    public var elapsed: Duration
    /// Commands that produced events.
    public var accepted: Int
    /// Rejected commands per kind of rejection.
    public var rejections: [String: Int]
    /// One rejected command.
    public var sampleRejection: Rejection?
    /// Events in the log before the run (its head position).
    public var eventsBefore: Int64
    /// Events in the log after the run.
    public var eventsAfter: Int64
    /// Group commit figures, on SQLite.
    public var groupCommit: GroupCommit?
    /// The ticket whose history is shown.
    public var ticketID: String
    /// Every event of that ticket.
    public var ticketHistory: [HistoricalEvent<Show>]
    /// The show whose past state is shown.
    public var showID: String
    /// The show's state as of an earlier version.
    public var earlier: LoadedAggregate<Show>
    /// The show's current state.
    public var current: LoadedAggregate<Show>

    /// Commands per second.
    public var commandsPerSecond: Double {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return seconds > 0 ? Double(commands) / seconds : 0
    }

    /// The report, as printed by `box-office demo`.
    public var text: String {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rejected = rejections.values.reduce(0, +)
        let kinds = rejections.sorted { $0.key < $1.key }.map { "\($0.key) \(grouped($0.value))" }
        var lines = [
            "\(grouped(commands)) commands for \(grouped(shows)) shows from \(tasks) concurrent tasks in "
                + "\(String(format: "%.2f", seconds)) s: \(grouped(Int(commandsPerSecond.rounded()))) commands/s",
            "  accepted \(grouped(accepted)), rejected \(grouped(rejected))"
                + (kinds.isEmpty ? "" : " (\(kinds.joined(separator: ", ")))"),
            "  events stored: \(grouped(Int(eventsAfter))) (\(grouped(Int(eventsAfter - eventsBefore))) by this run)",
        ]
        if let commit = groupCommit, commit.transactions > 0 {
            lines.append(
                "  group commit: \(grouped(commit.appends)) appends in \(grouped(commit.transactions)) transactions"
                    + " (up to \(commit.largestGroup) per transaction)")
        }
        if let sample = sampleRejection {
            lines += ["", "A rejected command:", "  \(sample.command)", "  -> \(sample.error.code): \(sample.error)"]
        }
        lines += ["", "The full history of ticket \(ticketID):"]
        let time = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        for entry in ticketHistory {
            var line = "  v\(entry.recorded.streamVersion)".padding(toLength: 9, withPad: " ", startingAt: 0)
            line += entry.recorded.recordedAt.formatted(time) + "  "
            line += entry.recorded.type.padding(toLength: 15, withPad: " ", startingAt: 0)
            if case .ticketSold(let sold) = entry.event { line += "to \(sold.buyer)" }
            while line.hasSuffix(" ") { line.removeLast() }
            lines.append(line)
        }
        lines += [
            "",
            "Show \(showID) as of version \(earlier.version) (of \(current.version)): \(summary(earlier.state))",
            "Show \(showID) now: \(summary(current.state))",
        ]
        return lines.joined(separator: "\n")
    }

    private func summary(_ show: Show) -> String {
        let added = "\(show.tickets.count) of \(show.capacity) tickets added"
        return "\(added), \(show.ticketsSold) sold, \(show.onSale.count) on sale"
    }
}

/// 12345 -> "12,345".
private func grouped(_ n: Int) -> String {
    let digits = String(n.magnitude)
    var result = ""
    for (i, c) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { result.append(",") }
        result.append(c)
    }
    return (n < 0 ? "-" : "") + result
}

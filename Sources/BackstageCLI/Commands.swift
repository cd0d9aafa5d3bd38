import ArgumentParser
import Backstage
import Dispatch
import Foundation

/// The root command.
struct BackstageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backstage",
        abstract: "Look inside a Backstage event store: streams, events, subscriptions, parked events.",
        discussion: """
            The store is sqlite:PATH (or a plain file path) or a postgres:// URL with --schema; \
            $BACKSTAGE_STORE is used when --store is not given. Nothing is created: a missing file \
            or an empty schema is an error.
            """,
        subcommands: [
            StreamsCommand.self, ReadCommand.self, EventsCommand.self, TailCommand.self,
            SubscriptionsCommand.self, ParkedCommand.self, RebuildCommand.self, StatsCommand.self,
            ExportCommand.self,
        ])
}

// MARK: streams

struct StreamsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "streams", abstract: "List streams with their version and last write, by stream id.")

    @OptionGroup var options: StoreOptions
    @Option(help: "Only streams of this category (the part of the id before the first '-').")
    var category: String?
    @Option(help: "Start after this stream id (the next page of a previous listing).")
    var after: String?
    @Option(help: "Streams per page.")
    var limit: Int = 50

    func run() async throws {
        try await withStore(options) { store, context in
            let page = try await store.inspector.streams(category: category, after: after, limit: limit)
            if options.json {
                let streams: [[String: Any]] = page.streams.map { s in
                    [
                        "stream": s.stream, "category": s.category, "version": s.version,
                        "lastPosition": s.lastPosition, "lastWrittenAt": Format.time(s.lastWrittenAt),
                    ]
                }
                var value: [String: Any] = ["streams": streams]
                if let next = page.next { value["next"] = next }
                context.output.write(Format.json(value) + "\n")
                return
            }
            if page.streams.isEmpty {
                context.output.write(category.map { "no streams in category '\($0)'\n" } ?? "no streams\n")
                return
            }
            context.output.write(
                Format.table(
                    ["STREAM", "VERSION", "LAST POSITION", "LAST WRITE"],
                    page.streams.map {
                        [$0.stream, String($0.version), String($0.lastPosition), Format.time($0.lastWrittenAt)]
                    }))
            if let next = page.next { context.output.write("more: --after '\(next)'\n") }
        }
    }
}

// MARK: read

struct ReadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read", abstract: "Print one stream's events with their metadata, forward or backward.")

    @OptionGroup var options: StoreOptions
    @Argument(help: "The stream id.")
    var stream: String
    @Flag(help: "Newest first.")
    var backward = false
    @Option(help: "First stream version to print (default: the first, or the last with --backward).")
    var from: Int64?
    @Option(help: "Events per page.")
    var limit: Int = 20

    func run() async throws {
        try await withStore(options) { store, context in
            let start = from ?? (backward ? Int64.max : 1)
            let events = try await store.readStream(
                stream, from: start, direction: backward ? .backward : .forward, limit: limit)
            if events.isEmpty {
                guard try await store.streamVersion(stream) > 0 else {
                    throw ToolError("stream '\(stream)' has no events")
                }
            }
            if options.json {
                context.output.write(Format.json(events.map(Format.eventValue)) + "\n")
                return
            }
            let version = try await store.streamVersion(stream)
            context.output.write("stream \(stream): version \(version)\n\n")
            for e in events { context.output.write(Format.event(e) + "\n") }
            if let last = events.last, events.count == limit {
                let next = backward ? last.streamVersion - 1 : last.streamVersion + 1
                if next >= 1 && next <= version {
                    context.output.write("more: --from \(next)\(backward ? " --backward" : "")\n")
                }
            }
        }
    }
}

// MARK: events

/// Options that select events of the global log.
struct LogFilterOptions: ParsableArguments {
    @Option(name: .customLong("type"), help: "Only events of this type (repeatable).")
    var types: [String] = []
    @Option(name: .customLong("category"), help: "Only events of streams of this category (repeatable).")
    var categories: [String] = []

    var filter: EventFilter {
        EventFilter(
            types: types.isEmpty ? nil : Set(types), categories: categories.isEmpty ? nil : Set(categories))
    }
}

struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events", abstract: "Print the global log from a position, filtered by type or category.")

    @OptionGroup var options: StoreOptions
    @OptionGroup var selection: LogFilterOptions
    @Option(help: "Start after this position (POSITION or TRANSACTION:POSITION; default: the start).")
    var after: String?
    @Option(help: "Events per page.")
    var limit: Int = 50

    func run() async throws {
        let position = try after.map(Format.position) ?? .start
        try await withStore(options) { store, context in
            let events = try await store.readAll(after: position, limit: limit, filter: selection.filter)
            if options.json {
                context.output.write(Format.json(events.map(Format.eventValue)) + "\n")
                return
            }
            if events.isEmpty {
                context.output.write("no events after position \(position)\n")
                return
            }
            for e in events { context.output.write(Format.event(e) + "\n") }
            if let last = events.last, events.count == limit {
                context.output.write("more: --after \(last.logPosition)\n")
            }
        }
    }
}

// MARK: tail

struct TailCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tail", abstract: "Follow new events until interrupted (Ctrl-C ends cleanly).")

    @OptionGroup var options: StoreOptions
    @OptionGroup var selection: LogFilterOptions
    @Option(help: "Start after this position (default: the head of the log: only new events).")
    var after: String?
    @Flag(help: "Start at the beginning of the log.")
    var fromStart = false
    @Option(help: "Stop after this many events (default: never).")
    var count: Int?
    @Option(help: "Milliseconds between polls when there is nothing new.")
    var interval: Int = 250

    func run() async throws {
        let start = try after.map(Format.position)
        try await withStore(options) { store, context in
            let first: LogPosition
            if let start {
                first = start
            } else {
                first = fromStart ? .start : try await store.headPosition()
            }
            if !options.json, context.output.errorIsTerminal {
                context.output.error("following events after position \(first); Ctrl-C stops\n")
            }
            let filter = selection.filter
            let pause = Duration.milliseconds(max(interval, 10))
            let limit = count
            let json = options.json
            try await untilInterrupted {
                var position = first
                var printed = 0
                while !Task.isCancelled {
                    let events = try await store.readAll(after: position, limit: 500, filter: filter)
                    for e in events {
                        context.output.write(json ? Format.json(Format.eventValue(e)) + "\n" : Format.eventLine(e))
                        position = e.logPosition
                        printed += 1
                        if let limit, printed >= limit { return }
                    }
                    if events.count < 500 { try await Task.sleep(for: pause) }
                }
            }
        }
    }
}

/// Runs `body` until it returns or the process gets SIGINT or SIGTERM (then `body` is cancelled
/// and this returns normally).
func untilInterrupted(_ body: @escaping @Sendable () async throws -> Void) async throws {
    let (signals, continuation) = AsyncStream<Void>.makeStream()
    let sources = [SIGINT, SIGTERM].map { number -> any DispatchSourceSignal in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { continuation.yield() }
        source.resume()
        return source
    }
    defer {
        for source in sources { source.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        continuation.finish()
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await body() }
        group.addTask {
            for await _ in signals { return }
            throw CancellationError()
        }
        do {
            try await group.next()
        } catch is CancellationError {
        }
        group.cancelAll()
        while (try? await group.next()) != nil {}
    }
}

// MARK: subscriptions

struct SubscriptionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscriptions",
        abstract: "Subscriptions with their checkpoint, lag, lease and whether they run.")

    @OptionGroup var options: StoreOptions

    func run() async throws {
        try await withStore(options) { store, context in
            var filters: [String: EventFilter] = [:]
            if let pipelines = context.tool.pipelines {
                let service = try await pipelines(store)
                for (name, handler) in service.handlers { filters[name] = handler.filter }
                for (name, projection) in service.projections {
                    let version = try await projection.activeVersion()
                    filters[projectionSubscription(name, version: version)] = projection.filter
                }
            }
            let subscriptions = try await store.inspector.subscriptions(filters: filters)
            if options.json {
                let values: [[String: Any]] = subscriptions.map { s in
                    var value: [String: Any] = [
                        "subscription": s.subscription, "lagEvents": s.lagEvents, "lagSeconds": s.lagSeconds,
                        "filtered": s.filtered, "activity": s.activity.rawValue, "parked": s.parked,
                    ]
                    if let c = s.checkpoint { value["checkpoint"] = c.description }
                    if let at = s.checkpointUpdatedAt { value["checkpointUpdatedAt"] = Format.time(at) }
                    if let lease = s.lease {
                        var l: [String: Any] = [
                            "owner": lease.owner, "token": lease.token, "acquiredAt": Format.time(lease.acquiredAt),
                            "held": lease.held,
                        ]
                        if let e = lease.expiresAt { l["expiresAt"] = Format.time(e) }
                        value["lease"] = l
                    }
                    return value
                }
                context.output.write(Format.json(values) + "\n")
                return
            }
            if subscriptions.isEmpty {
                context.output.write("no subscriptions (no checkpoint, lease or parked event is stored)\n")
                return
            }
            context.output.write(
                Format.table(
                    ["SUBSCRIPTION", "STATE", "CHECKPOINT", "LAG", "LAG TIME", "PARKED", "LEADER", "TOKEN", "LEASE"],
                    subscriptions.map { s in
                        [
                            s.subscription, s.activity.rawValue, s.checkpoint?.description ?? "-",
                            "\(s.lagEvents)\(s.filtered ? "" : "*")", Format.duration(s.lagSeconds), String(s.parked),
                            s.lease?.owner ?? "-", s.lease.map { String($0.token) } ?? "-", leaseText(s.lease),
                        ]
                    }))
            if subscriptions.contains(where: { !$0.filtered }) {
                context.output.write(
                    "* every event after the checkpoint (the subscription's filter is known to the application's build only)\n"
                )
            }
        }
    }

    private func leaseText(_ lease: LeaseInfo?) -> String {
        guard let lease else { return "-" }
        if let expires = lease.expiresAt {
            if lease.held { return "held, \(Format.duration(expires.timeIntervalSinceNow)) left" }
            // A lease given back at shutdown expires at the epoch.
            return expires.timeIntervalSince1970 < 1 ? "released" : "expired \(Format.time(expires))"
        }
        return lease.held ? "held since \(Format.time(lease.acquiredAt))" : "free"
    }
}

// MARK: parked

struct ParkedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parked", abstract: "Parked events: list, replay, discard.",
        subcommands: [ParkedListCommand.self, ParkedReplayCommand.self, ParkedDiscardCommand.self],
        defaultSubcommand: ParkedListCommand.self)
}

struct ParkedListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List parked events, oldest first.")

    @OptionGroup var options: StoreOptions
    @Option(help: "Only those of this subscription.")
    var subscription: String?
    @Option(help: "At most this many.")
    var limit: Int = 100

    func run() async throws {
        try await withStore(options) { store, context in
            let parked: [ParkedEvent]
            if let pipelines = context.tool.pipelines {
                parked = try await pipelines(store).parkedEvents(subscription: subscription, limit: limit)
            } else {
                parked = try await store.inspector.parkedEvents(subscription: subscription, limit: limit)
            }
            if options.json {
                let values: [[String: Any]] = parked.map { p in
                    [
                        "subscription": p.subscription, "error": p.error, "attempts": p.attempts,
                        "parkedAt": Format.time(p.parkedAt), "event": Format.eventValue(p.event),
                    ]
                }
                context.output.write(Format.json(values) + "\n")
                return
            }
            if parked.isEmpty {
                context.output.write("no parked events\n")
                return
            }
            context.output.write(
                Format.table(
                    ["SUBSCRIPTION", "POSITION", "STREAM", "TYPE", "ATTEMPTS", "PARKED AT", "ERROR"],
                    parked.map { p in
                        [
                            p.subscription, p.event.logPosition.description,
                            "\(p.event.stream)@\(p.event.streamVersion)",
                            p.event.type, String(p.attempts), Format.time(p.parkedAt),
                            String(p.error.split(whereSeparator: \.isNewline).joined(separator: " ").prefix(120)),
                        ]
                    }))
        }
    }
}

/// The store and the parked event that `parked replay` and `parked discard` act on.
struct ParkedEventArguments: ParsableArguments {
    @OptionGroup var options: StoreOptions
    @Argument(help: "The subscription (a handler's name, or projection@vN).")
    var subscription: String
    @Argument(help: "The event's position, as `parked list` prints it.")
    var position: String

    /// Opens the store and runs `body` with it, the tool's context and the event's position;
    /// then writes "`done` the parked event at <position> for <subscription>".
    func run(done: String, _ body: (any EventStore, ToolContext, LogPosition) async throws -> Void) async throws {
        let at = try Format.position(position)
        try await withStore(options) { store, context in
            try await body(store, context, at)
            context.output.write("\(done) the parked event at \(at) for \(subscription)\n")
        }
    }
}

struct ParkedReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay", abstract: "Handle a parked event again (needs the application's build of the tool).")

    @OptionGroup var event: ParkedEventArguments

    func run() async throws {
        try await event.run(done: "replayed") { store, context, at in
            guard let pipelines = context.tool.pipelines else {
                throw ToolError(
                    "replaying runs the subscription's handler, which this build does not have: run the application's build of the tool (see the BackstageCLI documentation: Sources/BackstageCLI/BackstageCLI.docc/CommandLine.md)"
                )
            }
            try await pipelines(store).replayParked(subscription: event.subscription, position: at)
        }
    }
}

struct ParkedDiscardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discard", abstract: "Remove a parked event without handling it.")

    @OptionGroup var event: ParkedEventArguments

    func run() async throws {
        try await event.run(done: "discarded") { store, context, at in
            let subscription = event.subscription
            if let pipelines = context.tool.pipelines {
                try await pipelines(store).discardParked(subscription: subscription, position: at)
            } else if try await store.pipelineDefaults.parkedEvents.remove(subscription: subscription, position: at)
                == nil
            {
                throw PipelineError.parkedEventNotFound(subscription: subscription, position: at)
            }
        }
    }
}

// MARK: rebuild

struct RebuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebuild",
        abstract: "Rebuild a projection into a new version, then switch to it (needs the application's build).")

    @OptionGroup var options: StoreOptions
    @Argument(help: "The projection's name.")
    var projection: String

    func run() async throws {
        try await withStore(options) { store, context in
            guard let pipelines = context.tool.pipelines else {
                throw ToolError(
                    "rebuild runs the projection's code, which this build does not have: run the application's build of the tool (see the BackstageCLI documentation: Sources/BackstageCLI/BackstageCLI.docc/CommandLine.md)"
                )
            }
            let service = try await pipelines(store)
            guard service.projections[projection] != nil else {
                let known = service.projections.keys.sorted().joined(separator: ", ")
                throw ToolError("no projection named '\(projection)' (registered: \(known.isEmpty ? "none" : known))")
            }
            let name = projection
            let output = context.output
            let version = try await withThrowingTaskGroup(of: Int?.self) { group in
                group.addTask {
                    try await service.leadership.run()
                    return nil
                }
                group.addTask {
                    let progress = Progress(output)
                    while !Task.isCancelled {
                        if let status = service.status().first(where: { $0.name == name && $0.subscription != name }) {
                            let at = status.checkpoint?.position ?? 0
                            progress.update(
                                "rebuilding \(status.subscription): position \(at) of \(status.head.position)")
                        }
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                    progress.finish()
                    return nil
                }
                group.addTask { try await service.rebuild(projection: name) }
                defer { group.cancelAll() }
                while let result = try await group.next() {
                    if let version = result { return version }
                }
                throw CancellationError()
            }
            if options.json {
                context.output.write(Format.json(["projection": name, "version": version]) + "\n")
            } else {
                context.output.write("projection \(name) rebuilt: version \(version) now serves\n")
            }
        }
    }
}

// MARK: stats

struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats", abstract: "Event counts by type and per day (UTC).")

    @OptionGroup var options: StoreOptions
    @Option(help: "Only events of streams of this category.")
    var category: String?

    func run() async throws {
        try await withStore(options) { store, context in
            let stats = try await store.inspector.statistics(category: category)
            if options.json {
                let value: [String: Any] = [
                    "events": stats.events, "streams": stats.streams,
                    "byType": stats.byType.map {
                        [
                            "type": $0.type, "count": $0.count, "first": Format.time($0.first),
                            "last": Format.time($0.last),
                        ] as [String: Any]
                    },
                    "byDay": stats.byDay.map { ["day": $0.day, "count": $0.count] as [String: Any] },
                ]
                context.output.write(Format.json(value) + "\n")
                return
            }
            context.output.write("\(stats.events) events in \(stats.streams) streams\n\n")
            guard stats.events > 0 else { return }
            context.output.write(
                Format.table(
                    ["TYPE", "EVENTS", "FIRST", "LAST"],
                    stats.byType.map { [$0.type, String($0.count), Format.time($0.first), Format.time($0.last)] }))
            context.output.write("\n")
            context.output.write(Format.table(["DAY", "EVENTS"], stats.byDay.map { [$0.day, String($0.count)] }))
        }
    }
}

// MARK: export

struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write the log, a category or a stream as JSON Lines or CSV (for audits and analysis).")

    enum FileFormat: String, ExpressibleByArgument, CaseIterable {
        case jsonl, csv
    }

    @OptionGroup var options: StoreOptions
    @OptionGroup var selection: LogFilterOptions
    @Option(help: "Only this stream.")
    var stream: String?
    @Option(help: "jsonl (one JSON object per line) or csv.")
    var format: FileFormat = .jsonl
    @Option(name: [.short, .long], help: "Write to this file instead of standard output.")
    var output: String?

    func validate() throws {
        if stream != nil && !(selection.types.isEmpty && selection.categories.isEmpty) {
            throw ValidationError("--stream exports one stream: it does not combine with --type or --category")
        }
    }

    func run() async throws {
        try await withStore(options) { store, context in
            let sink: ExportSink
            if let output {
                guard FileManager.default.createFile(atPath: output, contents: nil),
                    let handle = FileHandle(forWritingAtPath: output)
                else { throw ToolError("cannot create \(output)") }
                sink = ExportSink(file: handle, output: context.output)
            } else {
                sink = ExportSink(file: nil, output: context.output)
            }
            defer { sink.close() }
            let progress = Progress(context.output)
            let csv = format == .csv
            if csv { sink.write(Format.csvHeader) }
            var exported = 0
            func emit(_ events: [RecordedEvent], of total: String) {
                var buffer = ""
                for e in events { buffer += csv ? Format.csvRow(e) : Format.json(Format.eventValue(e)) + "\n" }
                sink.write(buffer)
                exported += events.count
                progress.update("exported \(exported) events\(total)")
            }
            if let stream {
                let version = try await store.streamVersion(stream)
                guard version > 0 else { throw ToolError("stream '\(stream)' has no events") }
                var from: Int64 = 1
                while from <= version {
                    let events = try await store.readStream(stream, from: from, direction: .forward, limit: 1_000)
                    guard let last = events.last else { break }
                    emit(events, of: " of \(version)")
                    from = last.streamVersion + 1
                }
            } else {
                let head = try await store.headPosition()
                var position = LogPosition.start
                while true {
                    let events = try await store.readAll(after: position, limit: 1_000, filter: selection.filter)
                    guard let last = events.last else { break }
                    emit(events, of: " (position \(last.position) of \(head.position))")
                    position = last.logPosition
                    if events.count < 1_000 { break }
                }
            }
            progress.finish()
            if let output { context.output.error("exported \(exported) events to \(output)\n") }
        }
    }
}

/// Where `export` writes: a file, or standard output.
struct ExportSink {
    let file: FileHandle?
    let output: CommandOutput

    func write(_ text: String) {
        if let file { file.write(Data(text.utf8)) } else { output.write(text) }
    }

    func close() { try? file?.close() }
}

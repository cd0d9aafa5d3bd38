import Backstage
import Foundation
import Hummingbird

/// The console's pages: each reads what it shows and renders it as ``HTML``.
struct ConsolePages: Sendable {
    let console: BackstageConsole
    /// Where the console is mounted, e.g. `/console`.
    let base: String

    var store: any EventStore { console.app.store }
    var inspector: any StoreInspector { console.app.store.inspector }
    var pageSize: Int { console.configuration.pageSize }

    /// Renders `page`, or the problem it ran into as an error page.
    func respond(_ page: () async throws -> Response) async -> Response {
        do {
            return try await page()
        } catch let problem as ConsoleProblem {
            return .html(
                layout(problem.title, section: "", content: "<p class=\"problem\">\(problem.message)</p>"),
                status: problem.status)
        } catch {
            return .html(
                layout(
                    "Something went wrong", section: "",
                    content: "<p class=\"problem\">The store answered: \(String(describing: error))</p>"),
                status: .internalServerError)
        }
    }

    // MARK: Layout

    func layout(_ title: String, section: String, content: HTML) -> HTML {
        let sections = [
            ("", "Overview"), ("log", "Log"), ("streams", "Streams"), ("subscriptions", "Subscriptions"),
            ("parked", "Parked"), ("aggregates", "Aggregates"),
        ]
        let nav = sections.map { path, name -> HTML in
            let href = path.isEmpty ? base : "\(base)/\(path)"
            return path == section
                ? "<a href=\"\(href)\" aria-current=\"page\">\(name)</a>" : "<a href=\"\(href)\">\(name)</a>"
        }
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(title) · \(console.configuration.title)</title>
            <style>\(HTML(unsafeRaw: Self.style))</style>
            </head><body>
            <header><a class="brand" href="\(base)">\(console.configuration.title)</a><nav>\(nav)</nav></header>
            <main><h1>\(title)</h1>
            \(content)
            </main></body></html>
            """
    }

    static let style = """
        body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
        header{display:flex;gap:1.5rem;align-items:center;padding:.6rem 1.5rem;background:#20232a;color:#fff}
        header a{color:#cfd8e3;text-decoration:none}header a[aria-current]{color:#fff;font-weight:600}
        .brand{font-weight:700;color:#fff!important;letter-spacing:.02em}nav{display:flex;gap:1rem}
        main{padding:1rem 1.5rem;max-width:1200px}h1{font-size:1.4rem;margin:.3rem 0 1rem}h2{font-size:1.1rem;margin-top:1.6rem}
        table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}
        th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e4e7eb;vertical-align:top}
        th{background:#eef1f4;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
        pre{margin:.3rem 0;white-space:pre-wrap;word-break:break-all;background:#f3f5f7;padding:.4rem;border-radius:3px}
        code{font-size:.92em}.muted{color:#6b7785}.problem{color:#a4161a;font-weight:600}.ok{color:#1b7f3b}
        .cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;padding:.7rem 1rem;box-shadow:0 1px 2px #0001;min-width:9rem}
        .card b{display:block;font-size:1.5rem}form.inline{display:inline}button{cursor:pointer}
        .state-live{color:#1b7f3b}.state-failed{color:#a4161a}.pager{margin:.8rem 0;display:flex;gap:1rem}
        input,select{padding:.25rem}dl{margin:.2rem 0;display:grid;grid-template-columns:max-content auto;gap:0 .8rem}
        dt{color:#6b7785}dd{margin:0}code.data{font-size:.85em;color:#39424e;word-break:break-all}
        """

    // MARK: Pieces

    func streamLink(_ stream: String, version: Int64? = nil) -> HTML {
        let href = link("\(base)/stream", [("id", stream)]) + (version.map { "#v\($0)" } ?? "")
        return "<a href=\"\(href)\">\(stream)</a>"
    }

    func messageLink(_ id: UUID) -> HTML {
        "<a href=\"\(link("\(base)/message", [("id", id.uuidString)]))\"><code>\(id.uuidString)</code></a>"
    }

    func date(_ date: Date?) -> HTML {
        guard let date else { return "<span class=\"muted\">–</span>" }
        return "<time datetime=\"\(iso8601(date))\">\(iso8601(date))</time>"
    }

    /// Event data as indented JSON (or the bytes as text when they are not JSON).
    func prettyData(_ data: Data) -> String {
        guard let object = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]),
            let pretty = try? JSONSerialization.data(
                withJSONObject: object,
                options: [.prettyPrinted, .sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])
        else { return String(decoding: data, as: UTF8.self) }
        return String(decoding: pretty, as: UTF8.self)
    }

    /// Event data on one line, cut at 120 characters: the table's glance; the details hold the rest.
    func compactData(_ data: Data) -> String {
        var text = String(decoding: data, as: UTF8.self)
        if let object = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]),
            let compact = try? JSONSerialization.data(
                withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])
        {
            text = String(decoding: compact, as: UTF8.self)
        }
        return text.count > 120 ? String(text.prefix(119)) + "…" : text
    }

    func metadata(_ event: RecordedEvent) -> HTML {
        var rows: [HTML] = ["<dt>event id</dt><dd><code>\(event.id.uuidString)</code></dd>"]
        if let id = event.metadata.commandID { rows.append("<dt>command</dt><dd>\(messageLink(id))</dd>") }
        if let id = event.metadata.causationID { rows.append("<dt>caused by</dt><dd>\(messageLink(id))</dd>") }
        if let id = event.metadata.correlationID { rows.append("<dt>correlation</dt><dd>\(messageLink(id))</dd>") }
        for (key, value) in event.metadata.fields.sorted(by: { $0.key < $1.key }) {
            rows.append("<dt>\(key)</dt><dd>\(value)</dd>")
        }
        rows.append("<dt>schema version</dt><dd>\(event.schemaVersion)</dd>")
        return "<dl>\(rows)</dl>"
    }

    /// A table of events; `showStream` adds the stream column (the log), otherwise rows are anchored by version.
    func eventTable(_ events: [RecordedEvent], showStream: Bool, tbodyID: String? = nil) -> HTML {
        let rows = events.map { e -> HTML in
            let state: HTML =
                console.aggregates[e.category] != nil
                ? " <a class=\"muted\" href=\"\(link("\(base)/aggregate", [("stream", e.stream), ("version", "\(e.streamVersion)")]))\">state</a>"
                : .empty
            let streamCell: HTML = showStream ? "<td>\(streamLink(e.stream, version: e.streamVersion))</td>" : .empty
            return """
                <tr id="v\(e.streamVersion)"><td class="n">\(e.logPosition)</td>\(streamCell)<td class="n">\(e.streamVersion)\(state)</td>
                <td><b>\(e.type)</b></td><td><code class="data">\(compactData(e.data))</code></td><td>\(date(e.recordedAt))</td>
                <td><details><summary>data &amp; metadata</summary><pre>\(prettyData(e.data))</pre>\(metadata(e))</details></td></tr>
                """
        }
        let streamHead: HTML = showStream ? "<th>Stream</th>" : .empty
        let body: HTML = tbodyID.map { "<tbody id=\"\($0)\">" } ?? "<tbody>"
        return """
            <table class="events"><thead><tr><th class="n">Position</th>\(streamHead)<th class="n">Version</th><th>Type</th>
            <th>Data</th><th>Recorded</th><th>Details</th></tr></thead>\(body)\(rows)</tbody></table>
            """
    }

    /// The live tail: a script that prepends the events of `/tail` to the table body `tbodyID`.
    func liveTail(tbodyID: String, after: LogPosition, query: [(String, String?)]) -> HTML {
        let source = link("\(base)/tail", [("after", after.description)] + query)
        return """
            <p><span id="tail-status" class="muted">The live tail needs JavaScript.</span></p>
            <script>
            (function () {
              const body = document.getElementById(\(HTML(unsafeRaw: jsString(tbodyID))));
              const status = document.getElementById("tail-status");
              status.textContent = "connecting to the live tail…";
              const base = \(HTML(unsafeRaw: jsString(base)));
              const source = new EventSource(\(HTML(unsafeRaw: jsString(source))));
              function cell(row, text, cls) { const td = document.createElement("td"); if (cls) td.className = cls; td.textContent = text; row.appendChild(td); return td; }
              source.onopen = function () { status.textContent = "live: new events appear at the top"; status.className = "ok"; };
              source.onerror = function () { status.textContent = "live tail interrupted, reconnecting…"; status.className = "muted"; };
              source.onmessage = function (message) {
                const e = JSON.parse(message.data);
                const row = document.createElement("tr");
                row.className = "tailed";
                cell(row, e.logPosition, "n");
                const streamCell = cell(row, "");
                const a = document.createElement("a");
                a.href = base + "/stream?id=" + encodeURIComponent(e.stream) + "#v" + e.version;
                a.textContent = e.stream;
                streamCell.appendChild(a);
                cell(row, e.version, "n");
                const type = document.createElement("b"); type.textContent = e.type; cell(row, "").appendChild(type);
                const data = JSON.stringify(e.data);
                const code = document.createElement("code"); code.className = "data";
                code.textContent = data.length > 120 ? data.slice(0, 119) + "…" : data;
                cell(row, "").appendChild(code);
                cell(row, e.recordedAt);
                const details = document.createElement("details");
                const summary = document.createElement("summary"); summary.textContent = "data & metadata";
                const pre = document.createElement("pre"); pre.textContent = JSON.stringify({data: e.data, metadata: e.metadata}, null, 2);
                details.appendChild(summary); details.appendChild(pre); cell(row, "").appendChild(details);
                body.insertBefore(row, body.firstChild);
                while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
              };
            })();
            </script>
            """
    }

    func jsString(_ text: String) -> String {
        // JSON string literal, with `<` escaped so `</script>` cannot close the script.
        let data = (try? JSONSerialization.data(withJSONObject: [text], options: [])) ?? Data("[\"\"]".utf8)
        let array = String(decoding: data, as: UTF8.self)
        return String(array.dropFirst().dropLast()).replacingOccurrences(of: "<", with: "\\u003c")
    }

    /// The last `count` events of the log matching `filter`, newest first; nil when finding them
    /// would mean paging through more than 20,000 events.
    ///
    /// The log reads forward only: this reads from a little before the head, and further back
    /// (eight times as far each time) until it has `count` events. On single-writer stores the
    /// distance is in positions; on PostgreSQL in transaction ids.
    func latestEvents(head: LogPosition, count: Int, filter: EventFilter = .all) async throws -> [RecordedEvent]? {
        guard head.position > 0, count > 0 else { return [] }
        let pageSize = min(500, store.limits.maxPageSize)
        var span = UInt64(max(count, 16))
        while true {
            let from: LogPosition
            if head.transaction == 0 {
                from = LogPosition(position: max(0, head.position - Int64(clamping: span)))
            } else {
                from = head.transaction > span ? LogPosition(transaction: head.transaction - span, position: 0) : .start
            }
            var tail: [RecordedEvent] = []
            var position = from
            var complete = false
            for _ in 0..<40 {
                let page = try await store.readAll(after: position, limit: pageSize, filter: filter)
                tail.append(contentsOf: page)
                if tail.count > count { tail.removeFirst(tail.count - count) }
                guard let last = page.last, page.count == pageSize else {
                    complete = true
                    break
                }
                position = last.logPosition
            }
            guard complete else { return nil }
            if tail.count >= count || from == .start { return tail.reversed() }
            let (wider, overflow) = span.multipliedReportingOverflow(by: 8)
            span = overflow ? .max : wider
        }
    }

    // MARK: Overview

    func overview(_ request: Request) async throws -> Response {
        let head = try await store.headPosition()
        let statistics = try await inspector.statistics(category: nil)
        let subscriptions = try await subscriptionRows()
        let parked = try await parkedEvents(subscription: nil, limit: 1_000).count
        let latest = try await latestEvents(head: head, count: 20) ?? []
        let cards: HTML = """
            <div class="cards">
            <div class="card"><b>\(statistics.events)</b>events</div>
            <div class="card"><b>\(statistics.streams)</b>streams</div>
            <div class="card"><b>\(head)</b>head position</div>
            <div class="card"><b>\(subscriptions.count)</b>subscriptions</div>
            <div class="card"><b class="\(parked > 0 ? "problem" : "ok")">\(parked)</b><a href="\(base)/parked">parked events</a></div>
            </div>
            """
        let types = statistics.byType.prefix(12).map { t -> HTML in
            "<tr><td><a href=\"\(link("\(base)/log", [("type", t.type)]))\">\(t.type)</a></td><td class=\"n\">\(t.count)</td><td>\(date(t.last))</td></tr>"
        }
        let content: HTML = """
            \(cards)
            <h2>Subscriptions</h2>
            \(subscriptionTable(subscriptions))
            <h2>Event types</h2>
            <table><thead><tr><th>Type</th><th class="n">Events</th><th>Last stored</th></tr></thead><tbody>\(types)</tbody></table>
            <h2>Latest events</h2>
            \(eventTable(latest, showStream: true, tbodyID: "tail"))
            \(liveTail(tbodyID: "tail", after: head, query: []))
            """
        return .html(layout("Overview", section: "", content: content))
    }

    // MARK: Log

    func log(_ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        let type = query.get("type").flatMap { $0.isEmpty ? nil : $0 }
        let category = query.get("category").flatMap { $0.isEmpty ? nil : $0 }
        let filter = EventFilter(types: type.map { [$0] }, categories: category.map { [$0] })
        let head = try await store.headPosition()
        let after = try query.get("after").map { text -> LogPosition in
            guard let position = parseLogPosition(text) else {
                throw ConsoleProblem(
                    status: .badRequest, title: "Not a log position", message: "'\(text)' is not a log position")
            }
            return position
        }
        let filterQuery: [(String, String?)] = [("type", type), ("category", category)]
        let events: [RecordedEvent]
        let heading: HTML
        if let after {
            events = try await store.readAll(after: after, limit: pageSize, filter: filter)
            heading = "<p class=\"muted\">Events after position \(after), oldest first.</p>"
        } else if let latest = try await latestEvents(head: head, count: pageSize, filter: filter) {
            events = latest
            heading = "<p class=\"muted\">The latest events, newest first; new ones appear at the top.</p>"
        } else {
            events = []
            heading = "<p class=\"muted\">New events appear at the top as they are stored.</p>"
        }
        var pager: [HTML] = ["<a href=\"\(link("\(base)/log", [("after", "0")] + filterQuery))\">from the start</a>"]
        if after != nil, events.count == pageSize, let last = events.last {
            pager.append(
                "<a href=\"\(link("\(base)/log", [("after", last.logPosition.description)] + filterQuery))\">next page</a>"
            )
        }
        let form: HTML = """
            <form method="get" action="\(base)/log">
            <label>Type <input name="type" value="\(type ?? "")"></label>
            <label>Category <input name="category" value="\(category ?? "")"></label>
            <button>Filter</button></form>
            """
        let tail: HTML = after == nil ? liveTail(tbodyID: "tail", after: head, query: filterQuery) : .empty
        let content: HTML = """
            \(form)\(heading)
            <div class="pager">\(pager)</div>
            \(eventTable(events, showStream: true, tbodyID: "tail"))
            \(tail)
            """
        return .html(layout("Log", section: "log", content: content))
    }

    // MARK: Streams

    func streams(_ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        let category = query.get("category").flatMap { $0.isEmpty ? nil : $0 }
        let after = query.get("after").flatMap { $0.isEmpty ? nil : $0 }
        let page = try await inspector.streams(category: category, after: after, limit: pageSize)
        let rows = page.streams.map { s -> HTML in
            """
            <tr><td>\(streamLink(s.stream))</td><td><a href="\(link("\(base)/streams", [("category", s.category)]))">\(s.category)</a></td>
            <td class="n">\(s.version)</td><td class="n">\(s.lastPosition)</td><td>\(date(s.lastWrittenAt))</td></tr>
            """
        }
        var pager: [HTML] = []
        if let next = page.next {
            pager.append(
                "<a href=\"\(link("\(base)/streams", [("category", category), ("after", next)]))\">next page</a>")
        }
        let content: HTML = """
            <form method="get" action="\(base)/streams">
            <label>Category <input name="category" value="\(category ?? "")"></label> <button>Filter</button></form>
            <form method="get" action="\(base)/stream"><label>Stream <input name="id" required></label> <button>Open</button></form>
            <table><thead><tr><th>Stream</th><th>Category</th><th class="n">Version</th><th class="n">Last position</th>
            <th>Last write</th></tr></thead><tbody>\(rows)</tbody></table>
            <div class="pager">\(pager)</div>
            """
        return .html(layout("Streams", section: "streams", content: content))
    }

    func stream(_ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        guard let id = query.get("id"), !id.isEmpty else {
            throw ConsoleProblem(status: .badRequest, title: "Which stream?", message: "give the stream's id: ?id=...")
        }
        let from = max(1, query.get("from").flatMap { Int64($0) } ?? 1)
        let events = try await store.readStream(id, from: from, direction: .forward, limit: pageSize)
        let version = try await store.streamVersion(id)
        guard version > 0 else {
            throw ConsoleProblem(
                status: .notFound, title: "No such stream", message: "the stream '\(id)' has no events")
        }
        var pager: [HTML] = []
        if from > 1 {
            let previous = max(1, from - Int64(pageSize))
            pager.append(
                "<a href=\"\(link("\(base)/stream", [("id", id), ("from", "\(previous)")]))\">earlier events</a>")
        }
        if let last = events.last, last.streamVersion < version {
            pager.append(
                "<a href=\"\(link("\(base)/stream", [("id", id), ("from", "\(last.streamVersion + 1)")]))\">later events</a>"
            )
        }
        let category = streamCategory(id)
        let aggregate: HTML =
            console.aggregates[category] != nil
            ? " · <a href=\"\(link("\(base)/aggregate", [("stream", id)]))\">current state</a>" : .empty
        let content: HTML = """
            <p>Category <a href="\(link("\(base)/streams", [("category", category)]))">\(category)</a> ·
            version \(version)\(aggregate)</p>
            <div class="pager">\(pager)</div>
            \(eventTable(events, showStream: false))
            """
        return .html(layout("Stream \(id)", section: "streams", content: content))
    }

    /// A command or event id: the events it produced (a command) or the event itself.
    func message(_ request: Request) async throws -> Response {
        guard let text = request.uri.queryParameters.get("id"), let id = UUID(uuidString: text) else {
            throw ConsoleProblem(
                status: .badRequest, title: "Not an id", message: "give a command or event id: ?id=UUID")
        }
        if let result = try await store.appendResult(forCommand: id) {
            let events = try await store.readStream(
                result.stream, from: result.firstVersion, direction: .forward,
                limit: Int(result.lastVersion - result.firstVersion + 1))
            let content: HTML = """
                <p>Command <code>\(id.uuidString)</code> stored versions \(result.firstVersion)–\(result.lastVersion)
                of \(streamLink(result.stream, version: result.firstVersion)).</p>
                \(eventTable(events, showStream: true))
                """
            return .html(layout("Command", section: "log", content: content))
        }
        // Not a command: look for an event with this id (or events correlated with it) in the log.
        var position = LogPosition.start
        var scanned = 0
        var found: RecordedEvent?
        var correlated: [RecordedEvent] = []
        let page = min(1_000, store.limits.maxPageSize)
        scan: while scanned < console.configuration.causationScanLimit {
            let events = try await store.readAll(after: position, limit: page, filter: .all)
            for e in events {
                if e.id == id { found = e }
                if e.metadata.correlationID == id, correlated.count < pageSize { correlated.append(e) }
            }
            scanned += events.count
            guard let last = events.last, events.count == page else { break scan }
            position = last.logPosition
        }
        guard found != nil || !correlated.isEmpty else {
            throw ConsoleProblem(
                status: .notFound, title: "Not found",
                message:
                    "no command, event or correlation with id \(id.uuidString) in the first \(scanned) events of the log"
            )
        }
        var content: HTML = .empty
        if let found { content += "<h2>Event</h2>\(eventTable([found], showStream: true))" }
        if !correlated.isEmpty { content += "<h2>Correlated events</h2>\(eventTable(correlated, showStream: true))" }
        return .html(layout("Message \(id.uuidString)", section: "log", content: content))
    }

    // MARK: Subscriptions

    /// A subscription as the console shows it: the stored view merged with this process's live one.
    struct SubscriptionRow {
        var subscription: String
        var info: SubscriptionInfo?
        var live: SubscriptionStatus?
        /// Parked events, counted through this process's pipelines when the store has no record.
        var parked = 0
    }

    func subscriptionRows() async throws -> [SubscriptionRow] {
        var filters: [String: EventFilter] = [:]
        let statuses = console.pipelines?.status() ?? []
        for status in statuses {
            if let handler = console.pipelines?.handlers[status.name] {
                filters[status.subscription] = handler.filter
            } else if let projection = console.pipelines?.projections[status.name] {
                filters[status.subscription] = projection.filter
            }
        }
        var rows: [String: SubscriptionRow] = [:]
        for info in try await inspector.subscriptions(filters: filters) {
            rows[info.subscription] = SubscriptionRow(subscription: info.subscription, info: info)
        }
        for status in statuses {
            rows[status.subscription, default: SubscriptionRow(subscription: status.subscription)].live = status
        }
        for (subscription, row) in rows {
            if let info = row.info {
                rows[subscription]?.parked = info.parked
            } else if row.live != nil, let pipelines = console.pipelines {
                // The pipelines keep their parked events elsewhere (given by name): ask them.
                rows[subscription]?.parked = try await pipelines.parkedEvents(subscription: subscription, limit: 1_000)
                    .count
            }
        }
        return rows.values.sorted { $0.subscription < $1.subscription }
    }

    func subscriptionTable(_ rows: [SubscriptionRow]) -> HTML {
        let body = rows.map { row -> HTML in
            let state: HTML
            if let live = row.live {
                switch live.state {
                case .starting: state = "starting here"
                case .catchingUp: state = "<span class=\"state-live\">catching up here</span>"
                case .live: state = "<span class=\"state-live\">live here</span>"
                case .stopped: state = "stopped here"
                case .failed(let reason): state = "<span class=\"state-failed\">failed: \(reason)</span>"
                }
            } else {
                switch row.info?.activity {
                case .running: state = "<span class=\"state-live\">running elsewhere</span>"
                case .stopped: state = "stopped"
                case .unknown, nil: state = "<span class=\"muted\">not running here</span>"
                }
            }
            let checkpoint = row.info?.checkpoint ?? row.live?.checkpoint
            let lagEvents = row.info?.lagEvents ?? row.live?.lagEvents ?? 0
            let lagSeconds: HTML = row.info.map { "\(String(format: "%.1f", $0.lagSeconds)) s" } ?? "–"
            let leader: HTML
            if let lease = row.info?.lease {
                let expiry: HTML = lease.expiresAt.map { " until \(date($0))" } ?? .empty
                leader =
                    "\(lease.owner) <span class=\"muted\">token \(lease.token)\(lease.held ? "" : ", not held")\(expiry)</span>"
            } else if row.live != nil {
                leader = "this process"
            } else {
                leader = "<span class=\"muted\">–</span>"
            }
            let parked = row.parked
            let parkedCell: HTML =
                parked > 0
                ? "<a class=\"problem\" href=\"\(link("\(base)/parked", [("subscription", row.subscription)]))\">\(parked)</a>"
                : "0"
            return """
                <tr><td><b>\(row.subscription)</b></td><td>\(state)</td><td class="n">\(checkpoint.map(\.description) ?? "–")</td>
                <td class="n">\(lagEvents)</td><td class="n">\(lagSeconds)</td><td>\(leader)</td><td class="n">\(parkedCell)</td></tr>
                """
        }
        return """
            <table class="subscriptions"><thead><tr><th>Subscription</th><th>State</th><th class="n">Checkpoint</th>
            <th class="n">Lag (events)</th><th class="n">Lag (time)</th><th>Leader</th><th class="n">Parked</th></tr></thead>
            <tbody>\(body)</tbody></table>
            """
    }

    func subscriptions(_ request: Request) async throws -> Response {
        let rows = try await subscriptionRows()
        let head = try await store.headPosition()
        let content: HTML = """
            <p class="muted">Head of the log: \(head). Checkpoints, leases and parked counts as the store records
            them; "here" is the live state of this process's pipelines.</p>
            \(subscriptionTable(rows))
            """
        return .html(layout("Subscriptions", section: "subscriptions", content: content))
    }

    // MARK: Parked events

    func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent] {
        if let pipelines = console.pipelines {
            return try await pipelines.parkedEvents(subscription: subscription, limit: limit)
        }
        return try await inspector.parkedEvents(subscription: subscription, limit: limit)
    }

    func parked(_ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        let subscription = query.get("subscription").flatMap { $0.isEmpty ? nil : $0 }
        var notice: HTML = .empty
        if let done = query.get("done"), ["replayed", "discarded"].contains(done) {
            notice = "<p class=\"ok notice\">The event at position \(query.get("position") ?? "?") was \(done).</p>"
        }
        let events = try await parkedEvents(subscription: subscription, limit: pageSize)
        let allowed = await console.configuration.actions.allows(request)
        let canAct = console.pipelines != nil && allowed
        let rows = events.map { p -> HTML in
            let fields: HTML = """
                <input type="hidden" name="subscription" value="\(p.subscription)">
                <input type="hidden" name="position" value="\(p.event.logPosition)">
                """
            let actions: HTML =
                canAct
                ? """
                <form class="inline" method="post" action="\(base)/parked/replay">\(fields)<button>Replay</button></form>
                <form class="inline" method="post" action="\(base)/parked/discard">\(fields)<button>Discard</button></form>
                """
                : "<button disabled title=\"actions are not allowed for this request\">Replay</button> <button disabled>Discard</button>"
            return """
                <tr><td>\(p.subscription)</td><td class="n">\(p.event.logPosition)</td>
                <td>\(streamLink(p.event.stream, version: p.event.streamVersion)) v\(p.event.streamVersion)</td>
                <td>\(p.event.type)</td><td class="n">\(p.attempts)</td><td>\(date(p.parkedAt))</td>
                <td><pre>\(p.error)</pre></td><td>\(actions)</td></tr>
                """
        }
        let explanation: HTML =
            canAct
            ? "<p class=\"muted\">Replay handles the event once more (removed on success); discard removes it unhandled.</p>"
            : console.pipelines == nil
                ? "<p class=\"muted\">Read-only: the console was mounted without pipelines, so it cannot replay.</p>"
                : "<p class=\"muted\">Read-only: the console's guard does not allow actions for this request.</p>"
        let content: HTML = """
            \(notice)\(explanation)
            <table class="parked"><thead><tr><th>Subscription</th><th class="n">Position</th><th>Event</th><th>Type</th>
            <th class="n">Attempts</th><th>Parked</th><th>Error</th><th>Actions</th></tr></thead><tbody>\(rows)</tbody></table>
            \(events.isEmpty ? "<p class=\"ok\">No parked events.</p>" : HTML.empty)
            """
        return .html(layout("Parked events", section: "parked", content: content))
    }

    /// Replays or discards one parked event (a form's POST), behind the guard.
    func act(_ request: Request, replay: Bool) async throws -> Response {
        if let site = request.headers[.init("Sec-Fetch-Site")!], site == "cross-site" {
            throw ConsoleProblem(
                status: .forbidden, title: "Refused", message: "a parked event cannot be changed from another site")
        }
        guard await console.configuration.actions.allows(request) else {
            throw ConsoleProblem(
                status: .forbidden, title: "Not allowed",
                message: "the console's guard does not allow replaying or discarding parked events for this request")
        }
        guard let pipelines = console.pipelines else {
            throw ConsoleProblem(
                status: .conflict, title: "Not available", message: "the console was mounted without pipelines")
        }
        let form = try await formFields(request)
        guard let subscription = form["subscription"], let position = form["position"].flatMap(parseLogPosition) else {
            throw ConsoleProblem(
                status: .badRequest, title: "Incomplete form", message: "the form needs a subscription and a position")
        }
        do {
            if replay {
                try await pipelines.replayParked(subscription: subscription, position: position)
            } else {
                try await pipelines.discardParked(subscription: subscription, position: position)
            }
        } catch let error as PipelineError {
            throw ConsoleProblem(
                status: .conflict, title: replay ? "Not replayed" : "Not discarded", message: "\(error)")
        } catch {
            throw ConsoleProblem(
                status: .unprocessableContent, title: "Replay failed",
                message: "the event failed again and stays parked: \(error)")
        }
        let done = replay ? "replayed" : "discarded"
        return .seeOther(link("\(base)/parked", [("done", done), ("position", position.description)]))
    }

    /// The fields of an `application/x-www-form-urlencoded` body.
    func formFields(_ request: Request) async throws -> [String: String] {
        let body = try await request.body.collect(upTo: 64 * 1024)
        var components = URLComponents()
        components.percentEncodedQuery = String(buffer: body).replacingOccurrences(of: "+", with: "%20")
        var fields: [String: String] = [:]
        for item in components.queryItems ?? [] { fields[item.name] = item.value ?? "" }
        return fields
    }

    // MARK: Aggregates

    func aggregates(_ request: Request) async throws -> Response {
        let registered = console.aggregates.values.sorted { $0.category < $1.category }
        let options = registered.map { a -> HTML in "<option value=\"\(a.category)\">\(a.name) (\(a.category))</option>"
        }
        let rows = registered.map { a -> HTML in
            "<tr><td>\(a.name)</td><td><a href=\"\(link("\(base)/streams", [("category", a.category)]))\">\(a.category)</a></td></tr>"
        }
        let content: HTML =
            registered.isEmpty
            ? "<p class=\"muted\">No aggregate type is registered with the console (<code>console.register(MyAggregate.self)</code>).</p>"
            : """
            <form method="get" action="\(base)/aggregate">
            <label>Type <select name="type">\(options)</select></label>
            <label>Id <input name="id" required></label>
            <label>Version <input name="version" type="number" min="1" placeholder="latest"></label>
            <button>Show state</button></form>
            <h2>Registered types</h2>
            <table><thead><tr><th>Aggregate</th><th>Category</th></tr></thead><tbody>\(rows)</tbody></table>
            """
        return .html(layout("Aggregates", section: "aggregates", content: content))
    }

    func aggregate(_ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        let category: String
        let id: String
        if let stream = query.get("stream"), let dash = stream.firstIndex(of: "-") {
            category = String(stream[..<dash])
            id = String(stream[stream.index(after: dash)...])
        } else if let type = query.get("type"), let given = query.get("id"), !given.isEmpty {
            category = type
            id = given
        } else {
            throw ConsoleProblem(
                status: .badRequest, title: "Which aggregate?", message: "give ?type=CATEGORY&id=ID (or ?stream=ID)")
        }
        guard let aggregate = console.aggregates[category] else {
            throw ConsoleProblem(
                status: .notFound, title: "Unknown aggregate type",
                message: "no aggregate type with category '\(category)' is registered with the console")
        }
        var requested: Int64?
        if let text = query.get("version"), !text.isEmpty {
            guard let version = Int64(text), version >= 0 else {
                throw ConsoleProblem(
                    status: .badRequest, title: "Not a version", message: "'\(text)' is not a stream version")
            }
            requested = version
        }
        let stream = "\(category)-\(id)"
        let latest = try await store.streamVersion(stream)
        guard latest > 0 else {
            throw ConsoleProblem(
                status: .notFound, title: "No such \(aggregate.name)", message: "the stream '\(stream)' has no events")
        }
        let (version, state) = try await aggregate.load(console.app, id, requested.map { min($0, latest) })
        func at(_ v: Int64) -> String {
            link("\(base)/aggregate", [("type", category), ("id", id), ("version", "\(v)")])
        }
        var pager: [HTML] = []
        if version > 1 {
            pager.append("<a href=\"\(at(1))\">first</a>")
            pager.append("<a href=\"\(at(version - 1))\">← version \(version - 1)</a>")
        }
        if version < latest {
            pager.append("<a href=\"\(at(version + 1))\">version \(version + 1) →</a>")
            pager.append("<a href=\"\(at(latest))\">latest (\(latest))</a>")
        }
        let event = try await store.readStream(stream, from: version, direction: .forward, limit: 1)
        let content: HTML = """
            <p>\(aggregate.name) <b>\(id)</b> in \(streamLink(stream, version: version)) at version <b>\(version)</b> of \(latest).</p>
            <div class="pager">\(pager)</div>
            <form method="get" action="\(base)/aggregate"><input type="hidden" name="type" value="\(category)">
            <input type="hidden" name="id" value="\(id)">
            <label>Version <input name="version" type="range" min="1" max="\(latest)" value="\(version)"
            oninput="this.nextElementSibling.textContent=this.value"> <output>\(version)</output></label> <button>Show</button></form>
            <h2>State</h2><pre class="state">\(state)</pre>
            <h2>The event of version \(version)</h2>
            \(eventTable(event, showStream: false))
            """
        return .html(layout("\(aggregate.name) \(id)", section: "aggregates", content: content))
    }
}

// A child process for the PostgreSQL multi-process tests. Modes:
//
//   subscribe <url> <schema> <poll ms>
//       Follows the global log from the start and prints, per event,
//         E <transaction> <position> <stream> <version> <event id> <delivered at, ns since 1970>
//       after a first line `ready`; stops after the first event of type `end` and prints `done`.
import Backstage
import BackstagePostgres
import Foundation

func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("backstage-postgres-worker: \(message)\n".utf8))
    exit(2)
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else { fail("usage: backstage-postgres-worker <mode> ...") }

func storeConfiguration(schema: String) -> PostgresEventStore.Configuration {
    var configuration = PostgresEventStore.Configuration()
    configuration.schema = schema
    configuration.maximumConnections = 4
    return configuration
}

switch arguments[1] {
case "subscribe":
    guard arguments.count == 5, let pollMillis = Int(arguments[4]) else {
        fail("usage: subscribe <url> <schema> <poll ms>")
    }
    let store = try await PostgresEventStore(url: arguments[2], configuration: storeConfiguration(schema: arguments[3]))
    let follower = LogFollower(store: store, pageSize: 1_000, pollInterval: .milliseconds(pollMillis))
    _ = try await store.headPosition()
    emit("ready")
    var buffer = ""
    var count = 0
    for try await event in follower.events(after: .start) {
        let now = Date().timeIntervalSince1970
        buffer += "E \(event.transaction) \(event.position) \(event.stream) \(event.streamVersion) \(event.id) \(Int64(now * 1e9))\n"
        count += 1
        if event.type == "end" { break }
        if buffer.utf8.count > 64 * 1024 {
            FileHandle.standardOutput.write(Data(buffer.utf8))
            buffer = ""
        }
    }
    FileHandle.standardOutput.write(Data(buffer.utf8))
    emit("done \(count)")
    await store.close()

default:
    fail("unknown mode \(arguments[1])")
}

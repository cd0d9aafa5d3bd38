// A child process for the SQLite multi-process tests. Modes:
//
//   <path>
//       The crash test: appends to an SQLite event store from many tasks until it is killed,
//       printing one line per acknowledged append:
//         ok <command id> <stream> <first position> <last position> <event count>
//   append <path> <stream> <type> <json>
//       Appends one event (expected version: any) and prints `appended <stream version>`.
//   sell <path> <shows> <capacity> <attempts> [<start at, ms since 1970>]
//       A BackstageApp dispatching <attempts> SellTicket commands (8 at a time) to random shows;
//       prints `result sold=<n> soldOut=<n> conflicts=<n> errors=<n>` (see RuntimeModes.swift).
import Backstage
import BackstageSQLite
import Foundation

if CommandLine.arguments.count > 1, let mode = runtimeModes[CommandLine.arguments[1]] {
    try await mode(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
}

let path = CommandLine.arguments[1]
let store = try SQLiteEventStore(path: path)

try await withThrowingTaskGroup(of: Void.self) { group in
    for worker in 0..<16 {
        group.addTask {
            var rng = SystemRandomNumberGenerator()
            while true {
                let count = Int.random(in: 1...5, using: &rng)
                let commandID = UUIDv7.next()
                let stream = "crash-\(worker)-\(Int.random(in: 0..<20, using: &rng))"
                let events = (0..<count).map { i in
                    EventData(
                        type: "Appended", data: Data(#"{"of":\#(count),"index":\#(i)}"#.utf8),
                        metadata: EventMetadata(commandID: commandID))
                }
                let result = try await store.append(events, to: stream, expected: .any, commandID: commandID)
                // One unbuffered write per line: what was printed was acknowledged.
                let line = "ok \(commandID) \(stream) \(result.firstPosition) \(result.lastPosition) \(count)\n"
                FileHandle.standardOutput.write(Data(line.utf8))
            }
        }
    }
    try await group.waitForAll()
}

import Backstage
import BackstageTesting
import Testing

@Suite("Inspection (in-memory)")
struct InspectionTests {
    @Test("the log-scanning inspector answers the inspection checks")
    func inMemory() async throws {
        let store = InMemoryEventStore()
        #expect(store.inspector is LogScanningInspector)
        try await InspectionConformance.run(on: store)
    }
}

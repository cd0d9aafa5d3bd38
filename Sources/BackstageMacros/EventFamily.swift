import Backstage

/// Makes an enum whose cases each carry one `Event` an `EventFamily`:
/// each event type is named once, in its case.
///
/// ```swift
/// @EventFamily
/// enum ShowEvent {
///     case scheduled(ShowScheduled)
///     case ticketAdded(TicketAdded)
/// }
/// ```
///
/// The macro adds an extension that conforms the enum to `EventFamily` and declares
/// `static var members` (one `EventMember` per case, in the order of the cases) and
/// `var event` (a `switch` over the cases, without the reflection of the default
/// implementation), both as visible as the enum. A `members` or an `event` the enum declares
/// itself is kept and not generated; `upcasters` are declared as usual.
///
/// A case without a payload, a case with several, or a declaration that is not an enum is a
/// compile-time error.
@attached(extension, conformances: EventFamily, names: named(members), named(event))
public macro EventFamily() = #externalMacro(module: "BackstageMacrosPlugin", type: "EventFamilyMacro")

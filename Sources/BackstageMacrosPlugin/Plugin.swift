import SwiftCompilerPlugin
import SwiftSyntaxMacros

/// The compiler plug-in that provides Backstage's macros.
@main
struct BackstageMacrosPlugin: CompilerPlugin {
    let providingMacros: [Macro.Type] = [EventFamilyMacro.self]
}

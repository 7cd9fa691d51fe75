-- Neovim 0.11+ LSP config for aipc-lsp (local-LLM code completion).
--
-- Put the folder that contains this `lsp/` directory on the runtimepath and
-- enable the server:
--
--   vim.opt.rtp:prepend('/path/to/aipc-lsp/editor-clients/nvim')
--   vim.lsp.enable('aipc_lsp')
--
-- Override any field with vim.lsp.config('aipc_lsp', { ... }); tables are
-- merged with this file. See docs/editors/neovim.md.

---@type vim.lsp.Config
return {
  -- `aipc-lsp` must be on $PATH (e.g. `pipx install aipc-lsp`), otherwise
  -- override: vim.lsp.config('aipc_lsp', { cmd = { '/path/to/python', '-m', 'aipc_lsp', 'serve' } })
  cmd = { 'aipc-lsp', 'serve' },
  filetypes = {
    'c',
    'cpp',
    'cs',
    'css',
    'go',
    'html',
    'java',
    'javascript',
    'javascriptreact',
    'json',
    'kotlin',
    'lua',
    'markdown',
    'php',
    'python',
    'ruby',
    'rust',
    'scala',
    'sh',
    'sql',
    'swift',
    'toml',
    'typescript',
    'typescriptreact',
    'yaml',
    'zig',
  },
  root_markers = { '.git' },
  -- Sent as `initializationOptions` in the `initialize` request.
  -- (vim.empty_dict() so an empty table is sent as `{}` rather than `[]`.)
  init_options = vim.empty_dict(),
  -- Sent via workspace/didChangeConfiguration and answered to
  -- workspace/configuration requests (section `aipc`).
  settings = {
    aipc = vim.empty_dict(),
  },
  handlers = {
    -- Pieces of a streamed aipc/inlineChat answer (lua/aipc/chat.lua draws them).
    ['aipc/chatChunk'] = function(err, params, ctx)
      local ok, chat = pcall(require, 'aipc.chat')
      if ok then
        chat.on_chunk(err, params, ctx)
      end
    end,
  },
}

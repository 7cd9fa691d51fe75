-- aipc for Neovim 0.11+: ghost text, inline chat, health check. With the server enabled
-- (vim.lsp.enable('aipc_lsp')) this is loaded by plugin/aipc.lua; call setup() to change options.
local config = require('aipc.config')

local M = {}

local function map(bufnr, lhs, fn, desc, fallback)
  if lhs then
    vim.keymap.set('i', lhs, function()
      if not fn() and fallback then
        fallback()
      end
    end, { buffer = bufnr, desc = desc })
  end
end

local function on_attach(bufnr)
  local keys = config.options.keys
  require('aipc.warm').attach(bufnr)
  if vim.lsp.inline_completion then
    -- Neovim 0.12+: the built-in ghost text.
    vim.lsp.inline_completion.enable(config.options.ghost.enabled, { bufnr = bufnr })
    map(bufnr, keys.accept, function() return vim.lsp.inline_completion.get() ~= false end, 'aipc: accept suggestion')
    return
  end
  local ghost = require('aipc.ghost')
  ghost.attach(bufnr)
  map(bufnr, keys.accept, ghost.accept, 'aipc: accept suggestion', function() ghost.request(bufnr) end)
  map(bufnr, keys.accept_word, ghost.accept_word, 'aipc: accept next word')
  map(bufnr, keys.accept_line, ghost.accept_line, 'aipc: accept next line')
  map(bufnr, keys.dismiss, function() ghost.clear(bufnr); return true end, 'aipc: dismiss suggestion')
end

function M.setup(opts)
  config.set(opts)
  local group = vim.api.nvim_create_augroup('aipc', { clear = true })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == require('aipc.util').NAME then
        on_attach(ev.buf)
      end
    end,
  })
  vim.api.nvim_create_user_command('AipcChat', function(cmd)
    require('aipc.chat').start(cmd.args, cmd.line1, cmd.line2)
  end, { nargs = '+', range = true, desc = 'aipc: chat about / edit the selected lines' })
  vim.api.nvim_create_user_command('AipcChatAccept', function() require('aipc.chat').accept() end,
    { desc = 'aipc: apply the edit of the last chat' })
  vim.api.nvim_create_user_command('AipcChatDiscard', function() require('aipc.chat').discard() end,
    { desc = 'aipc: close (and cancel) the chat' })
  vim.api.nvim_create_user_command('AipcSuggest', function() require('aipc.ghost').request() end,
    { desc = 'aipc: ask for a suggestion at the cursor now' })
end

return M

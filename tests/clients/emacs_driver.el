;;; emacs_driver.el --- headless eglot driver for tests/clients/test_emacs.py  -*- lexical-binding: t -*-
;;
;; Run as:  emacs --batch -l tests/clients/emacs_driver.el
;; (not -Q: that drops site-lisp, where Debian's elpa-eglot lives on Emacs 28;
;; --batch already skips the user's init file)
;;
;; Loads the Emacs Lisp blocks of docs/editors/emacs.md (extracted by the test into
;; $AIPC_EMACS_CONFIG), opens a Python file so that the documented `python-mode-hook'
;; runs `eglot-ensure', waits for the connection, then
;;   1. calls `eglot-completion-at-point' at the end of the file and records the candidates
;;      and the LSP item behind each one;
;;   2. runs `completion-at-point' there (what a user's key press does) and records the
;;      buffer afterwards;
;;   3. opens a second file, selects a region and calls the documented `aipc-chat' command
;;      (`workspace/executeCommand' "aipc.chat"), and records the buffer afterwards and
;;      the streamed chunks shown in *aipc-chat*.
;; Everything goes as JSON to $AIPC_EMACS_OUT; the assertions are made by the test.
;;
;; Parameters (environment variables):
;;   AIPC_EMACS_CONFIG       file with the documented configuration (required)
;;   AIPC_EMACS_FILE         Python file for the completion, cursor at its end (required)
;;   AIPC_EMACS_CHAT_FILE    Python file of the same project for the chat (required)
;;   AIPC_EMACS_CHAT_START   0-based first line of the chat region (default 0)
;;   AIPC_EMACS_CHAT_END     0-based line the region ends at, exclusive (default 1)
;;   AIPC_EMACS_OUT          where to write the JSON result (required)
;;   AIPC_EMACS_INSTRUCTION  chat instruction (default: "Rename the function to plus")
;;   AIPC_EMACS_CONNECT_S    how long to wait for the connection (default 60)
;;   AIPC_EMACS_READY_S      how long to wait for aipc/status to say ready (default 180)

(require 'cl-lib)
(require 'json)
(require 'subr-x)

(defvar aipc-driver--report (list (cons 'ok :json-false)))
(defvar aipc-driver--t0 (float-time))

(defun aipc-driver--put (key value)
  (setq aipc-driver--report (cons (cons key value) (assq-delete-all key aipc-driver--report))))

(defun aipc-driver--ms-since (t0)
  (round (* 1000 (- (float-time) t0))))

(defun aipc-driver--write ()
  (let ((out (getenv "AIPC_EMACS_OUT"))
        (json-encoding-pretty-print t))
    (with-temp-file out
      (insert (json-encode aipc-driver--report)))))

(defun aipc-driver--events-tail ()
  "Last part of the eglot events buffer, for diagnostics."
  (let ((buf (cl-find-if (lambda (b) (string-match-p "EGLOT.*events" (buffer-name b)))
                         (buffer-list))))
    (if (not buf) "(no events buffer)"
      (with-current-buffer buf
        (buffer-substring-no-properties (max (point-min) (- (point-max) 8000)) (point-max))))))

(defun aipc-driver--wait (seconds pred)
  "Process events until PRED is non-nil or SECONDS pass; return PRED's value."
  (let ((deadline (+ (float-time) seconds)) value)
    (while (and (not (setq value (funcall pred))) (< (float-time) deadline))
      (accept-process-output nil 0.05))
    value))

(defun aipc-driver--main ()
  (let* ((config (or (getenv "AIPC_EMACS_CONFIG") (error "AIPC_EMACS_CONFIG is not set")))
         (file (or (getenv "AIPC_EMACS_FILE") (error "AIPC_EMACS_FILE is not set")))
         (chat-file (or (getenv "AIPC_EMACS_CHAT_FILE") (error "AIPC_EMACS_CHAT_FILE is not set")))
         (chat-start (string-to-number (or (getenv "AIPC_EMACS_CHAT_START") "0")))
         (chat-end (string-to-number (or (getenv "AIPC_EMACS_CHAT_END") "1")))
         (instruction (or (getenv "AIPC_EMACS_INSTRUCTION") "Rename the function to plus"))
         (connect-s (string-to-number (or (getenv "AIPC_EMACS_CONNECT_S") "60")))
         (ready-s (string-to-number (or (getenv "AIPC_EMACS_READY_S") "180")))
         buf server)
    (aipc-driver--put 'emacs_version emacs-version)
    (require 'eglot)
    (aipc-driver--put 'eglot_file (locate-library "eglot"))
    (aipc-driver--put 'eglot_version
                      (or (ignore-errors
                            (with-temp-buffer
                              (insert-file-contents (find-library-name "eglot"))
                              (when (re-search-forward "^;; Version: \\(.*\\)$" nil t)
                                (match-string 1))))
                          :null))

    ;; 1. The documented configuration, as a user would have it in init.el.
    (load config nil t)
    (aipc-driver--put 'server_programs_entry
                      (format "%S" (cl-find-if (lambda (e) (and (consp (car e))
                                                                (memq 'python-mode (car e))))
                                               eglot-server-programs)))

    ;; 2. Visit the file: python-mode-hook -> eglot-ensure (which connects from
    ;;    post-command-hook; batch mode runs no command loop, so run that hook once).
    (setq buf (find-file-noselect file))
    (set-buffer buf)
    (aipc-driver--put 'major_mode (symbol-name major-mode))
    (run-hooks 'post-command-hook)
    (let ((t0 (float-time)))
      (setq server (aipc-driver--wait
                    connect-s
                    (lambda () (with-current-buffer buf
                                 (and (bound-and-true-p eglot--managed-mode)
                                      (eglot-current-server))))))
      (aipc-driver--put 'connect_ms (aipc-driver--ms-since t0)))
    (unless server
      (error "eglot did not connect within %ss" connect-s))
    (aipc-driver--put 'server_name (or (plist-get (eglot--server-info server) :name) :null))
    (aipc-driver--put 'completion_provider
                      (if (eglot--server-capable :completionProvider) t :json-false))
    (aipc-driver--put 'execute_commands
                      (or (eglot--server-capable :executeCommandProvider :commands) []))

    ;; The server loads the model after `initialized'; eglot's requests give up after
    ;; `jsonrpc-default-request-timeout' (10 s), so wait for aipc/status to say ready,
    ;; as a user would see it in the mode line before typing.
    (let ((t0 (float-time)) status)
      (aipc-driver--wait
       ready-s
       (lambda ()
         (setq status (jsonrpc-request server :aipc/status eglot--{}))
         (or (eq (plist-get status :ready) t) (progn (sleep-for 0.2) nil))))
      (aipc-driver--put 'ready_ms (aipc-driver--ms-since t0))
      (aipc-driver--put 'status_ready (if (eq (plist-get status :ready) t) t :json-false))
      (aipc-driver--put 'status_error (or (plist-get status :error) :null)))

    ;; 3. The completion-at-point function, called directly: what candidates come back.
    (goto-char (point-max))
    (aipc-driver--put 'position (eglot--pos-to-lsp-position))
    (let* ((t0 (float-time))
           (capf (eglot-completion-at-point))
           (table (nth 2 capf))
           (candidates (all-completions "" table)))
      (aipc-driver--put 'capf_ms (aipc-driver--ms-since t0))
      (aipc-driver--put
       'candidates
       (vconcat
        (mapcar (lambda (c)
                  (let ((item (get-text-property 0 'eglot--lsp-item c)))
                    (list (cons 'candidate (substring-no-properties c))
                          (cons 'label (plist-get item :label))
                          (cons 'insert_text_format (or (plist-get item :insertTextFormat) :null))
                          (cons 'new_text (or (plist-get (plist-get item :textEdit) :newText)
                                              :null)))))
                candidates))))

    ;; 4. What a user gets: M-x completion-at-point (C-M-i) with the cursor there.
    (let ((before (buffer-string))
          (t0 (float-time)))
      (goto-char (point-max))
      (completion-at-point)
      (aipc-driver--put 'capf_insert_ms (aipc-driver--ms-since t0))
      (aipc-driver--put 'completion_before before)
      (aipc-driver--put 'after_completion (buffer-substring-no-properties (point-min) (point-max))))

    ;; 5. Inline chat through the documented `aipc-chat' (workspace/executeCommand aipc.chat)
    ;;    on a region of a second file of the same project (eglot-ensure from the hook
    ;;    attaches it to the running server). eglot asks before applying a server-initiated
    ;;    edit (y-or-n-p): answer yes, and record that it asked.
    (let* ((cbuf (find-file-noselect chat-file))
           (asked nil)
           before result)
      (set-buffer cbuf)
      (run-hooks 'post-command-hook)
      (unless (aipc-driver--wait connect-s (lambda () (with-current-buffer cbuf
                                                        (bound-and-true-p eglot--managed-mode))))
        (error "eglot did not manage %s" chat-file))
      (aipc-driver--put 'chat_same_server (if (eq (eglot-current-server) server) t :json-false))
      (setq before (buffer-substring-no-properties (point-min) (point-max)))
      (let ((beg (progn (goto-char (point-min)) (forward-line chat-start) (point)))
            (end (progn (goto-char (point-min)) (forward-line chat-end) (point)))
            (t0 (float-time)))
        (aipc-driver--put 'chat_region (buffer-substring-no-properties beg end))
        (cl-letf (((symbol-function 'y-or-n-p)
                   (lambda (prompt) (push prompt asked) t)))
          (setq result (aipc-chat beg end instruction)))
        (aipc-driver--put 'chat_ms (aipc-driver--ms-since t0)))
      (aipc-driver--put 'chat_confirm_prompts (vconcat (nreverse asked)))
      (aipc-driver--put 'chat_applied (if (eq (plist-get result :applied) t) t :json-false))
      (aipc-driver--put 'chat_mode (or (plist-get result :mode) :null))
      (aipc-driver--put 'chat_text (or (plist-get result :text) :null))
      (aipc-driver--put 'chat_edit (or (plist-get result :edit) :null))
      (aipc-driver--put 'chat_before before)
      (aipc-driver--put 'chat_after (with-current-buffer cbuf
                                      (buffer-substring-no-properties (point-min) (point-max))))
      (aipc-driver--put 'chat_chunks_buffer
                        (if (get-buffer "*aipc-chat*")
                            (with-current-buffer "*aipc-chat*"
                              (buffer-substring-no-properties (point-min) (point-max)))
                          :null)))

    (aipc-driver--put 'ok t)))

(condition-case err
    (aipc-driver--main)
  (error
   (aipc-driver--put 'error (error-message-string err))))
(aipc-driver--put 'events_tail (aipc-driver--events-tail))
(aipc-driver--put 'total_ms (aipc-driver--ms-since aipc-driver--t0))
(aipc-driver--write)
;; Don't wait for the server's shutdown handshake; the test only needs the JSON.
(let ((kill-emacs-hook nil))
  (kill-emacs 0))

;;; emacs_driver.el ends here
